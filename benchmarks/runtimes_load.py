"""How busy the rest of the machine keeps it while :mod:`benchmarks.runtimes` measures.

Its rows run in subprocesses (Node, Chromium and its helpers), so the load of "other
processes" must leave out this process's whole tree, not only this process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.harness import LoadMeter, machine_busy_s

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float]]:
    """``{pid: (parent pid, CPU seconds used)}`` of every live process (``/proc/*/stat``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # The command name, in parentheses, may hold spaces: split after its last ")".
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) * TICK_S)
    return found


def tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds used by ``root`` (default: this process) and its live descendants."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0.0, [root or os.getpid()]
    while stack:
        pid = stack.pop()
        total += processes.get(pid, (0, 0.0))[1]
        stack += children.get(pid, [])
    return total


class OthersMeter:
    """Average cores used by processes outside this process's tree since construction.

    Descendants that end before :meth:`other_cores` take their CPU time with them, so
    measure while the rows' processes are alive.
    """

    def __init__(self) -> None:
        self.start = (time.perf_counter(), machine_busy_s(), tree_cpu_s())

    def other_cores(self) -> float:
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = time.perf_counter(), machine_busy_s(), tree_cpu_s()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def wait_until_quiet(max_cores: float, patience_s: float) -> float:
    """Poll (half a second at a time) until other processes use at most ``max_cores``, or
    ``patience_s`` has passed; the last load seen."""
    deadline = time.monotonic() + patience_s
    while True:
        meter = LoadMeter()
        time.sleep(0.5)
        load = meter.other_cores()
        if load <= max_cores or time.monotonic() >= deadline:
            return load
