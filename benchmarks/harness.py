"""Running benchmark cases on a shared machine: one process per case, its load, its memory peak.

A case is a JSON spec that a benchmark's own command line runs in a fresh interpreter (its
hidden ``--case`` flag), so one case's allocations cannot inflate the next one's peak.

Load: each case records how many cores other processes (and hypervisor steal) used while it ran,
from ``/proc/stat``. Before a case the :class:`CaseRunner` waits briefly for quiet, and runs a
disturbed short case again, at once and once more after the sweep, keeping the least disturbed
attempt; reports show the load, so inflated times are visible.

Peak memory: after the case's inputs exist and its call is built, the kernel's RSS high-water
mark is reset (``/proc/self/clear_refs``) and the current RSS is taken as the baseline. The
figure is ``ru_maxrss`` after the timed calls minus that baseline: the call's own working
memory, output included. Linux only (``ru_maxrss`` is in KiB there). On CUDA it is torch's
allocator high-water mark instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.arguments import add_number_options
from benchmarks.paths import REPO_ROOT
from benchmarks.timing import call_times

# Disturbed cases whose measured calls took longer than this are not retried.
RETRY_MAX_CASE_S = 10.0


@dataclass(frozen=True)
class Timing:
    """Budget for timing one case: seconds, minimum runs, and the cap for slow cases."""

    budget_s: float
    min_runs: int
    max_case_s: float


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark, so setup's transient peaks cannot hide the case's own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory figure, in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} line in /proc/self/status")


def current_rss_kib() -> int:
    """Resident set size now, in KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size since :func:`reset_peak_rss`, in KiB.

    ``VmHWM``, not ``ru_maxrss``: a child process's ``ru_maxrss`` starts from its parent's
    peak, so a case spawned by a large parent would report the parent's memory.
    """
    return _status_kib("VmHWM")


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    # Steal counts: time the hypervisor gave to other guests is time this benchmark lost.
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """How many cores other processes kept busy between construction and :meth:`other_cores`.

    The machine is shared, and intra-op threads that lose their core mid-operation stall the
    whole op, so a case timed under contention can be several times slower. This makes that
    visible instead of silently reporting it.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        own = os.times()
        return time.perf_counter(), machine_busy_s(), own.user + own.system

    def other_cores(self) -> float:
        """Average cores used by everything except this process since construction."""
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def measure_call(call: Callable[[], object], timing: Timing, *, cuda: bool = False) -> dict:
    """Time ``call`` under ``timing`` and measure its working memory; a JSON-ready record.

    ``cuda``: each timed call ends with a device synchronization (kernels launch
    asynchronously), and ``peak_mib`` is torch's allocator high-water mark above the baseline.
    Runs under ``torch.inference_mode()``.
    """
    timed = call
    if cuda:

        def timed() -> None:
            call()
            torch.cuda.synchronize()

        torch.cuda.reset_peak_memory_stats()
        baseline_bytes = torch.cuda.memory_allocated()
    gc.collect()
    hwm_reset = reset_peak_rss()
    baseline = current_rss_kib()
    meter = LoadMeter()
    with torch.inference_mode():
        times = call_times(
            timed,
            min_runs=timing.min_runs,
            budget_s=timing.budget_s,
            max_total_s=timing.max_case_s,
        )
    other = meter.other_cores()
    peak_kib = max(peak_rss_kib() - baseline, 0)
    if cuda:
        peak_kib = max(torch.cuda.max_memory_allocated() - baseline_bytes, 0) / 1024
    return {
        "median_ms": 1e3 * statistics.median(times),
        "runs": len(times),
        "peak_mib": peak_kib / 1024,
        "hwm_reset": hwm_reset,
        "threads": torch.get_num_threads(),
        "other_load": other,
    }


def spawn_case(module: str, spec: dict, timeout_s: float) -> dict:
    """Run ``python -m module --case SPEC`` in a fresh interpreter; its last stdout line's JSON.

    A crash or timeout becomes an ``error`` entry rather than an exception, so a sweep survives
    one case running out of memory.
    """
    command = [sys.executable, "-m", module, "--case", json.dumps(spec)]
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        # A negative code is a signal: -9 is most likely the kernel's OOM killer.
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"failed (rc={proc.returncode}) {tail[0][:120]}".rstrip()}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_arguments(parser: argparse.ArgumentParser, *, max_minutes: float) -> None:
    """The command-line options of :class:`CaseRunner`: load limit, patience, retries."""
    add_number_options(
        parser,
        [
            (
                "--max-other-load", float, 0.25,
                "cores other processes may use during a case before it counts as disturbed",
            ),
            (
                "--quiet-wait", float, 5.0,
                "seconds to wait at most, before each case, for other processes to go quiet",
            ),
            (
                "--retries", int, 1,
                f"extra attempts for a disturbed case shorter than {RETRY_MAX_CASE_S:g} s; the "
                "least disturbed attempt is kept",
            ),
            (
                "--max-minutes", float, max_minutes,
                "after this many minutes the sweep stops waiting for quiet and retrying "
                "disturbed cases; every case still runs once, so a sweep ends soon after",
            ),
            ("--case-timeout", float, 600.0, "seconds before a case's process is killed"),
        ],
    )  # fmt: skip


class CaseRunner:
    """Runs a benchmark's cases in fresh processes, waiting for quiet and retrying disturbed ones.

    ``module`` is the benchmark's command line (``python -m module --case SPEC`` runs one
    case). The options are those of :func:`add_arguments`; the deadline starts now.
    """

    def __init__(self, module: str, args: argparse.Namespace) -> None:
        self.module = module
        self.max_other_load: float = args.max_other_load
        self.quiet_wait: float = args.quiet_wait
        self.retries: int = args.retries
        self.case_timeout: float = args.case_timeout
        self.deadline = time.monotonic() + 60 * args.max_minutes

    def spawn(self, spec: dict) -> dict:
        """One attempt at ``spec``, without waiting or retrying."""
        return spawn_case(self.module, spec, self.case_timeout)

    def time_left(self) -> float:
        """Seconds before the deadline, after which the runner stops waiting and retrying."""
        return max(0.0, self.deadline - time.monotonic())

    def wait_until_quiet(self, patience_s: float) -> float:
        """Poll until other processes use few cores, or ``patience_s`` runs out; the last load."""
        deadline = time.monotonic() + min(patience_s, self.time_left())
        while True:
            meter = LoadMeter()
            time.sleep(0.5)
            load = meter.other_cores()
            if load <= self.max_other_load or time.monotonic() >= deadline:
                return load

    def disturbed(self, result: dict) -> bool:
        """Whether other processes used enough CPU during a measured case to inflate its time."""
        return "median_ms" in result and result["other_load"] > self.max_other_load

    def retriable(self, result: dict) -> bool:
        """A disturbed case short enough to run again, while there is time left."""
        measured_s = result.get("median_ms", 0.0) * result.get("runs", 0) / 1e3
        return self.disturbed(result) and measured_s <= RETRY_MAX_CASE_S and self.time_left() > 0

    def measure(self, spec: dict, patience_s: float | None = None) -> dict:
        """Run a case, again (up to ``retries`` times) if other processes disturbed it.

        Keeps the attempt with the least foreign load. Long cases are not retried: they cost
        more than the noise they would remove, and their report carries the load figure instead.
        ``patience_s`` overrides ``quiet_wait``.
        """
        best: dict | None = None
        for attempt in range(1 + self.retries):
            self.wait_until_quiet(self.quiet_wait if patience_s is None else patience_s)
            result = self.spawn(spec)
            if "error" in result:
                # A crash on a retry should not throw away a good first attempt.
                return best or result
            if best is None or result["other_load"] < best["other_load"]:
                best = result
            if not self.retriable(result):
                break
            if attempt < self.retries:
                note = f"other processes used {result['other_load']:.2f} cores; retrying"
                print(f"         {note}", file=sys.stderr, flush=True)
        assert best is not None
        return best

    def remeasure(self, result: dict, spec: dict) -> dict | None:
        """One more attempt, later, at a short case that stayed disturbed; None if not better.

        Contention on a shared machine comes in bursts of minutes, so immediate retries often
        hit the same burst; a later window often does not. The returned record keeps
        ``result``'s other keys (what the sweep added to it).
        """
        if not self.retriable(result):
            return None
        again = self.measure(spec)
        if "error" in again or again["other_load"] >= result["other_load"]:
            return None
        return {**result, **again}
