"""Session creation, prefill and decode of the sample LM on every runtime favor runs on.

    python -m benchmarks.runtimes [--export build/char_lm] [--steps 800] [--burst 40]

Rows: ``favor.runtime``'s Generator, on the export's dynamic graph and on its ``--static``
pair where it has one (the first-token and per-token latency of both), and plain
``InferenceSession.run`` in Python;
favor-runtime.mjs's Generator and bare ``session.run`` on onnxruntime-node; favor-runtime.mjs
on onnxruntime-web (wasm) in headless Chromium; each with 1 and 2 threads. Probe rows explain
the differences: ONNX Runtime's default thread count, the "echo" of the export (same inputs,
outputs and state, no compute: what a step costs besides the model's arithmetic), ONNX
Runtime's memory pattern (which favor's session options turn off), and onnxruntime-web's wasm
under Node.

Every row follows one protocol (``benchmarks/js/measure.mjs``). Each row is started alone, one
after another: its session is created ``--loads`` times, then it runs a cold sequence (a
prefill and ``--first-steps`` steps) and warms up. Then every row is timed in bursts (a prefill
of 256 tokens from an empty state and ``--burst`` decode steps), the rows taking turns burst by
burst, their order reversed every other round: a shared machine's slow phases, which last
seconds, then hit every row alike. A burst is two prefills of 256 tokens, the first not counted,
and ``--burst`` decode steps. Writes ``runtimes.md``, ``runtimes.json`` and
``runtimes.png`` to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import onnxruntime as ort

from benchmarks.machine import machine_info
from benchmarks.paths import REPO_ROOT, RESULTS_DIR
from benchmarks.report import say_written, write_json
from benchmarks.runtimes_cases import Case, cases
from benchmarks.runtimes_echo import write_echo_export
from benchmarks.runtimes_js import BrowserPages, NodeRow, missing
from benchmarks.runtimes_load import OthersMeter, wait_until_quiet
from benchmarks.runtimes_python import PythonRow
from benchmarks.runtimes_report import plot, render_table, size_line, summarize
from favor.runtime.manifest import find_manifest, read_manifest

DEFAULT_EXPORT = REPO_ROOT / "build" / "char_lm"
BUILD = "favor-export samples/char_lm/char_lm.pt --opset 17 --static -o build/char_lm"
RUNTIMES = ("python", "node", "browser")
# Prefills per burst: the first runs while the processor recovers from the switch between
# runtimes (steps right after a switch are up to 1.5x slower for some 10 ms, even without
# compute), so only the later ones count (benchmarks.runtimes_report.summarize).
BURST_PREFILLS = 2


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def runtimes_arg(text: str) -> set[str]:
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(RUNTIMES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"runtimes are a comma-separated subset of {','.join(RUNTIMES)}, got {text!r}"
        )
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options, checked; the export must exist."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.runtimes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="a causal LM export")
    parser.add_argument("--loads", type=positive, default=3, help="session creations per row")
    parser.add_argument("--prefill", type=positive, default=256, help="prompt tokens")
    parser.add_argument(
        "--first-steps", type=positive, default=200, help="decode steps of the cold sequence"
    )
    parser.add_argument(
        "--steps", type=positive, default=800, help="timed decode steps per row, in bursts"
    )
    parser.add_argument("--burst", type=positive, default=40, help="decode steps per burst")
    parser.add_argument("--warmup-ms", type=int, default=500, help="native rows' warm-up")
    parser.add_argument(
        "--wasm-warmup-ms",
        type=int,
        default=3000,
        help="wasm rows' warm-up: the engine optimizes hot code in the background meanwhile",
    )
    parser.add_argument(
        "--runtimes", type=runtimes_arg, default=set(RUNTIMES), help="python,node,browser"
    )
    parser.add_argument("--no-probes", dest="probes", action="store_false")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="cores other processes may use: waits for that before starting, and flags a run "
        "they exceeded",
    )
    parser.add_argument(
        "--patience-s", type=float, default=120, help="the longest wait for a quiet machine"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if min(args.warmup_ms, args.wasm_warmup_ms) < 0:
        parser.error("--warmup-ms and --wasm-warmup-ms must be >= 0")
    if not find_export(args.export):
        parser.error(f"no export at {args.export}: build it with `{BUILD}`, or pass --export DIR")
    return args


def find_export(path: Path) -> bool:
    try:
        find_manifest(path)
    except ValueError:
        return False
    return True


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Runner:
    """Starts every row one after another, then times them in interleaved bursts."""

    def __init__(self, args: argparse.Namespace, echo_dir: Path) -> None:
        self.args, self.echo_dir = args, echo_dir
        self.export = args.export.resolve()
        self.name = read_manifest(find_manifest(self.export), verify=False)["name"]
        self.browser: dict = {}
        self.other_load = 0.0

    def plan(self, wasm: bool) -> dict[str, int]:
        """The runners' plan: loads, the cold sequence and warm-up, and a first burst (one
        prefill and the cold sequence's length: a solo figure kept in the JSON only)."""
        args = self.args
        return {
            "loads": args.loads,
            "prefill": args.prefill,
            "prefill_repeats": 1,
            "steps": args.first_steps,
            "warmup_ms": args.wasm_warmup_ms if wasm else args.warmup_ms,
        }

    def row(self, case: Case) -> PythonRow | NodeRow:
        export = self.echo_dir if case.echo else self.export
        plan = self.plan(case.wasm)
        if case.runtime == "python":
            return PythonRow(export, case.variant, case.threads, plan, mem_pattern=case.mem_pattern)
        return NodeRow(export, case.module, case.variant, case.threads, plan, case.session_options)

    def run(self, chosen: Sequence[Case], meter: OthersMeter) -> dict[str, tuple[dict, list[dict]]]:
        """Each row's first report and bursts, by key; ``other_load`` keeps what ``meter``
        read while the rows' processes were alive."""
        starts: dict[str, dict] = {}
        bursts: dict[str, Callable[[int, int], dict]] = {}
        with contextlib.ExitStack() as stack:
            for case in chosen:
                if case.runtime == "browser":
                    continue
                row = self.row(case)
                stack.callback(row.close)
                say(f"starting {case.key}")
                starts[case.key], bursts[case.key] = row.start(), row.burst
            pages = [case for case in chosen if case.runtime == "browser"]
            if pages:
                say(f"starting {', '.join(case.key for case in pages)} in Chromium")
                browser = BrowserPages(
                    self.export, self.name, [case.threads for case in pages], self.plan(True)
                )
                stack.callback(browser.close)
                version, reports = browser.start()
                self.browser = {"chromium": version, "wasm": reports[0]["wasm"]}
                for index, (case, report) in enumerate(zip(pages, reports, strict=True)):
                    starts[case.key] = report["results"]
                    bursts[case.key] = functools.partial(browser.burst, index)
            measured = self.interleave(starts, bursts)
            self.other_load = meter.other_cores()
            return measured

    def interleave(
        self, starts: dict[str, dict], bursts: dict[str, Callable[[int, int], dict]]
    ) -> dict[str, tuple[dict, list[dict]]]:
        """Time every row in turn, one burst at a time, the order reversed every other round."""
        rounds = math.ceil(self.args.steps / self.args.burst)
        keys = list(bursts)
        timed: dict[str, list[dict]] = {key: [] for key in keys}
        for number in range(rounds):
            if number % 10 == 0:
                say(f"bursts: rounds {number + 1}-{min(number + 10, rounds)} of {rounds}")
            for key in keys if number % 2 == 0 else keys[::-1]:
                timed[key].append(bursts[key](BURST_PREFILLS, self.args.burst))
        return {key: (starts[key], timed[key]) for key in keys}


NOTES = (
    "first load: the first session creation in a fresh Node process or page, so it pays for "
    "loading onnxruntime and, in the browser, compiling its wasm (Python's rows share one "
    "process); load: the median of the later ones. Generator rows read and check the "
    "manifest and verify every file's sha256 before creating the session; bare and plain "
    "rows only create it",
    "first steps: the median step of the first sequence after loading, before any warm-up",
    "decode: the median over bursts of each burst's median step; IQR: the quartiles of those "
    "burst medians. tokens/s: all timed steps over their total wall time",
    "echo graph (probe): the export's inputs, outputs and state passed through without "
    "compute, so its decode step is what a call costs besides the model's arithmetic",
    "memory pattern on (probe): favor's session options with ONNX Runtime's memory pattern "
    "turned back on (favor turns it off: it doubles peak memory on long prompts)",
)


def markdown(args: argparse.Namespace, report: dict, table: str, notes: Sequence[str]) -> str:
    """``runtimes.md``: the command, machine, versions, sizes and protocol, then the table."""
    machine, versions = report["machine"], report["versions"]
    features = ", ".join(machine["cpu_features"]) or "none listed"
    command = " ".join(["python -m benchmarks.runtimes", *report["argv"]])
    lines = [
        "# The sample LM on Python, Node and the browser",
        "",
        f"- command: `{command}`",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} logical cores; CPU features: {features}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        f"- export: `{shown_path(args.export)}`; {report['sizes']}",
        f"- protocol: each row started alone: {args.loads} session creations, a cold sequence "
        f"(a prefill and {args.first_steps} steps), {args.warmup_ms} ms of warm-up "
        f"({args.wasm_warmup_ms} ms for wasm); then all rows timed in turn, burst by burst "
        f"({BURST_PREFILLS} prefills of {args.prefill} tokens, the first not counted, and "
        f"{args.burst} decode steps), "
        f"{math.ceil(args.steps / args.burst)} bursts each; batch 1, fp32, CPU",
        "",
        table,
        "",
        *(f"- {note}" for note in notes),
    ]
    return "\n".join(lines) + "\n"


def shown_path(path: Path) -> Path:
    """``path`` relative to the repository where it lies inside, as the README's commands say."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else resolved


def versions(rows: Sequence[dict], browser: dict) -> dict[str, str]:
    """The runtimes' versions as the rows reported them."""
    found = {"onnxruntime (Python)": ort.__version__}
    for row in rows:
        if row["runtime"] != "python":
            found[row["module"]] = row["versions"]["ort"]
        if row["runtime"] == "node":
            found["Node"] = row["versions"]["node"]
    if browser:
        found["Chromium"] = browser["chromium"]
    return found


def run(args: argparse.Namespace) -> dict:
    """Measure every available row, print the table and write runtimes.md, .json and .png."""
    started = time.perf_counter()
    notes = list(NOTES)
    available = set(args.runtimes)
    for runtime in sorted(args.runtimes - {"python"}):
        reason = missing(runtime)
        if reason:
            say(f"leaving out {runtime}: {reason}")
            notes.append(f"no {runtime} rows: {reason}")
            available.discard(runtime)
    manifest = read_manifest(find_manifest(args.export), verify=False)
    static = "static" in manifest
    if not static:
        notes.append(f"no static rows: the export has no --static graphs (`{BUILD}` writes them)")
    chosen = cases(available, probes=args.probes, static=static)
    say("waiting for other processes to leave the machine quiet")
    before = wait_until_quiet(args.max_other_load, args.patience_s)
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(args, write_echo_export(args.export, Path(tmp)))
        meter = OthersMeter()
        measured = runner.run(chosen, meter)
    load = {"before": before, "during": runner.other_load}
    notes.append(
        f"other processes used {load['during']:.2f} cores on average while the rows ran "
        f"({load['before']:.2f} just before)"
    )
    if max(load.values()) > args.max_other_load:
        notes.append(
            f"that is more than {args.max_other_load:g}: this run's times are likely inflated; "
            "run it again on a quieter machine"
        )
    rows = [summarize(case, *measured[case.key]) for case in chosen]
    config = ("loads", "prefill", "first_steps", "steps", "burst", "warmup_ms", "wasm_warmup_ms")
    report = {
        "argv": args.argv,
        "machine": machine_info(),
        "versions": versions(rows, runner.browser),
        "sizes": size_line(manifest["files"]["onnx"]["bytes"], runner.browser.get("wasm", [])),
        "config": {key: getattr(args, key) for key in config} | {"export": str(args.export)},
        "other_load": load,
        "rows": rows,
    }
    table = render_table(rows, args.prefill)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "runtimes.md").write_text(markdown(args, report, table, notes))
    write_json(args.out_dir / "runtimes.json", report)
    plot(rows, args.prefill, args.out_dir / "runtimes.png")
    files = ["runtimes.md", "runtimes.json", "runtimes.png"]
    say_written(files, args.out_dir, time.perf_counter() - started)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.runtimes``: run with command-line options."""
    run(parse_args(argv))


if __name__ == "__main__":
    main()
