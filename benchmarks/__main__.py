"""The whole performance benchmark in one command, judged against the issue-6 targets.

Run from the repository root::

    python -m benchmarks            # full run: n = 1024 ... 65536, decode up to 8192, int8 (~9 min)
    python -m benchmarks --quick    # smoke run, a few minutes; most targets "not measured"
    python -m benchmarks --lengths 4096,16384 --out /tmp/bench

Runs :mod:`benchmarks.attention`'s sweep (every case in a fresh process, progress per case on
stderr), :mod:`benchmarks.decode` and (not with ``--quick``) :mod:`benchmarks.quantize`'s report
on the sample models, which write their own tables, JSON and plots; then writes
``summary.md`` and ``summary.json`` beside them: date, machine and a targets table computed by
:mod:`benchmarks.targets` from this run's records only.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import attention, decode, quantize, targets
from benchmarks.arguments import lengths_arg
from benchmarks.attention_methods import available_methods
from benchmarks.machine import machine_info
from benchmarks.paths import RESULTS_DIR
from benchmarks.report import say_written, write_json

FULL_LENGTHS = (1024, 4096, 8192, 16384, 65536)
# 4096 is in the smoke run so that one SDPA speedup row is exercised end to end.
QUICK_LENGTHS = (512, 1024, 4096)
# The targets need no textbook cumsum form, and it costs GiBs and seconds per call.
LEFT_OUT_METHODS = ("cumsum_causal",)
# CPU SDPA is O(n²): at 65536 one call takes 30-60 s on 2 cores and no target reads it.
SDPA_MAX_LENGTH = 16384
# The attention sweep stops retrying disturbed cases after this, leaving time for decode.
ATTENTION_MAX_MINUTES = 10.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the one-command benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the attention sweep and the decode benchmark, then judge the results "
        "against the performance targets. Writes attention.*, decode.* and summary.md/.json "
        "to --out.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: attention at n = "
        + ",".join(map(str, QUICK_LENGTHS))
        + " with shorter timing, decode at contexts "
        + ",".join(map(str, decode.QUICK_CONTEXTS)),
    )
    parser.add_argument(
        "--lengths",
        type=lengths_arg,
        default=None,
        help="attention sequence lengths (default: " + ",".join(map(str, FULL_LENGTHS)) + ")",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="output folder (default: benchmarks/results/)",
    )
    return parser.parse_args(argv)


def attention_argv(args: argparse.Namespace) -> list[str]:
    """Options for :func:`benchmarks.attention.parse_args`: this run's lengths and methods."""
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    methods = [m for m in available_methods() if m not in LEFT_OUT_METHODS]
    argv = [
        "--lengths",
        ",".join(map(str, lengths)),
        "--methods",
        ",".join(methods),
        "--sdpa-max-length",
        str(SDPA_MAX_LENGTH),
        "--max-minutes",
        # A smoke run does not wait for quiet or retry disturbed cases at all.
        "0" if args.quick else str(ATTENTION_MAX_MINUTES),
        "--out-dir",
        str(args.out),
    ]
    if args.quick:
        # A smoke run checks that everything runs, not the last percent of precision.
        argv += ["--budget", "0.5"]
    return argv


def decode_argv(args: argparse.Namespace) -> list[str]:
    """Options for :func:`benchmarks.decode.parse_args`."""
    return ["--out-dir", str(args.out), *(["--quick"] if args.quick else [])]


def summary_markdown(machine: dict, rows: Sequence[targets.Row], notes: Sequence[str]) -> str:
    """``summary.md``: when and where, the targets table, and pointers to the full results."""
    lines = [
        "# Performance benchmark: targets",
        "",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} logical cores; "
        f"CUDA: {machine['cuda_device'] or 'none'}",
        f"- torch {machine['torch']}, onnxruntime {machine['onnxruntime']}",
        "- attention: B=1, H=8, D=64, M=128, fp32, through the exported graph where the target "
        "says ORT; decode: the LM of `benchmarks/decode.py`",
        "",
        targets.render(rows),
        "",
        *(f"- {note}" for note in notes),
        "",
        "Full tables: `attention.md`, `decode.md`, `quantize.md` (int8 accuracy and perplexity); "
        "plots: `attention.png` (latency and memory vs n, log-log), `decode.png`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run both benchmarks, write and print the summary."""
    args = parse_args(argv)
    started = time.perf_counter()
    print("== attention sweep", file=sys.stderr, flush=True)
    attention_args = attention.parse_args(attention_argv(args))
    attention_report = attention.run(attention_args)
    print("== decode", file=sys.stderr, flush=True)
    decode_report = decode.run(decode.parse_args(decode_argv(args)))
    if not args.quick:
        print("== int8 quantization on the sample models", file=sys.stderr, flush=True)
        quantize.main(["--out", str(args.out)])
    rows = targets.evaluate(attention_report["results"], decode_report["results"])
    machine = machine_info()
    notes = ["every ratio divides two figures from this run at the same length"]
    timed = [r for r in attention_report["results"] if "median_ms" in r]
    busy = sum(r["other_load"] > attention_args.max_other_load for r in timed)
    if busy:
        notes.append(
            f"{busy} of {len(timed)} attention cases ran while other processes used more than "
            f"{attention_args.max_other_load:g} cores (marked † in attention.md): their times "
            "are likely inflated"
        )
    if machine["cuda_device"] is None:
        notes.append("GPU rows: no CUDA device")
    if args.quick:
        notes.append("--quick run: smoke test with short timing, not results; no int8 report")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(summary_markdown(machine, rows, notes))
    summary = {
        "machine": machine,
        "options": {"quick": args.quick, "argv": list(sys.argv[1:] if argv is None else argv)},
        "targets": [row.as_dict() for row in rows],
        "notes": notes,
        "wall_s": time.perf_counter() - started,
    }
    write_json(args.out / "summary.json", summary)
    print("\n" + targets.render(rows))
    say_written(["summary.md", "summary.json"], args.out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
