"""Latency, peak memory and FLOP efficiency of FAVOR+ attention against torch's SDPA on CPU.

Run from the repository root::

    python -m benchmarks.attention            # full sweep, n = 512 ... 32768
    python -m benchmarks.attention --quick    # n = 512, 1024, 2048
    python -m benchmarks.attention --lengths 4096,65536 --methods favor_causal_ort,sdpa_causal

Methods, all fp32 on CPU under ``torch.inference_mode()`` with torch's default thread count:

* ``favor``: ``FavorAttention(D, M, causal=False)``, non-causal linear attention.
* ``favor causal``: ``FavorAttention(D, M, causal=True)``, chunked prefix sums (``C`` tokens).
* ``favor, ORT`` / ``favor causal, ORT``: the same modules exported once through
  ``favor.exporter.export``, as ``favor-export`` writes them (dynamo exporter, opset 17, batch
  and length dynamic, the exporter's post-processing included), and run in an ONNX Runtime CPU
  session with ``favor.runtime``'s session options (full graph optimization, no memory pattern).
  This is the path deployed models take.
* ``favor causal, ORT fused``: the causal module exported as ``favor-export --fused-attention``
  writes it, the contraction as one ``com.microsoft.LinearAttention`` node (same session options).
* ``sdpa`` / ``sdpa causal``: ``F.scaled_dot_product_attention(q, k, v, is_causal=...)``.
* ``cumsum causal``: the textbook causal form, a per-token prefix sum of ``phi(k) v^T`` with shape
  ``(B, H, N, M, Dv)``, on the module's own ``feature_maps``. It is O(N M Dv) in memory, which is
  what chunking avoids, so it is skipped where that tensor would exceed ``--cumsum-limit-gib``.
* GPU rows, included by default only where they can run: ``sdpa causal, CUDA``, ``favor causal,
  CUDA`` (eager), ``favor causal, TorchScript CUDA`` (``torch.jit.trace`` of the module at each
  length) and ``favor causal, ORT CUDA`` (the exported causal graph on ONNX Runtime's CUDA
  provider, inputs and output bound on the device). Each timed call ends with a device
  synchronization; peak memory is torch's allocator high-water mark (not visible for ORT's own
  allocator, so blank there). Their speedup is against ``sdpa causal, CUDA``.

The methods are objects in :data:`benchmarks.attention_methods.METHODS`; the report is
:mod:`benchmarks.attention_report`. Every case runs in a fresh subprocess (this module with a
hidden ``--case`` flag), so one case's allocations cannot inflate the next one's peak; the
machine's load during each case and its peak working memory are measured as
:mod:`benchmarks.harness` describes, and the table shows that load, so inflated times are
visible. Timing (:func:`benchmarks.timing.call_times`): one warm-up call, then repeated calls
until at least ``--min-runs`` calls and ``--budget`` seconds have passed; the median is
reported. Cases whose warm-up call is slow get fewer runs so that no case spends much more than
``--max-case-seconds`` on measured calls.

FLOP counts, per head (multiply by ``B * H``), counting the multiply-adds of matrix products as 2
and ignoring element-wise work (exp, norms, division, masking, the chunk-level cumsum). ``n`` is the
sequence length, ``D`` the query/key head size, ``Dv`` the value head size (``= D`` here), ``M``
the number of features and ``C`` the chunk size. The ``Dv + 1`` comes from the ones column that
carries the denominator through the same products.

* feature maps, both methods: ``2 n M D`` for the queries plus ``2 n M D`` for the keys.
* ``favor``: feature maps + ``2 n M (Dv + 1)`` for ``phi_k^T V`` + ``2 n M (Dv + 1)`` for
  ``phi_q S``.
* ``favor causal``: as ``favor`` (the per-chunk summaries and the ``phi_q @ prefix`` products have
  the same size) + ``2 n C M`` for the intra-chunk ``phi_q phi_k^T`` + ``2 n C (Dv + 1)`` for the
  masked scores times values. Half of each intra-chunk product is masked away but still computed,
  so it is counted. DESIGN.md's planning figure of ``8 n M D`` leaves out the intra-chunk terms;
  with ``M = 128, D = 64, C = 64`` the honest count is about 1.4x that figure.
* ``cumsum causal``: counted like ``favor`` (the outer products and prefix sums do ``2 n M Dv``
  arithmetic, the same as ``phi_k^T V``), although it moves far more memory.
* ``sdpa``: ``4 n^2 D`` (``Q K^T`` and ``P V``); ``sdpa causal``: half of that, ``2 n^2 D``.

Achieved GFLOP/s is FLOPs / median time; "% of matmul" divides it by the same run's fp32
``torch.matmul`` rate on square ``--matmul-size`` matrices (``2 s^3`` FLOPs).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import harness
from benchmarks.arguments import add_number_options, add_sizes_options
from benchmarks.attention_methods import METHODS, Config, available_methods
from benchmarks.attention_report import json_report, plot, render_header, render_table
from benchmarks.attention_sweep import CASE_MODULE, run_case, run_sweep
from benchmarks.harness import CaseRunner, Timing
from benchmarks.paths import RESULTS_DIR
from benchmarks.report import say_written, write_json

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (512, 1024, 2048)
DEFAULT_OUT_DIR = RESULTS_DIR
NUMBER_OPTIONS = (
    ("--batch", int, 1, "batch size B"),
    ("--heads", int, 8, "heads H"),
    ("--dim-head", int, 64, "head size D = Dv"),
    ("--features", int, 128, "features M"),
    ("--chunk-size", int, 64, "causal FAVOR chunk size C"),
    ("--budget", float, 2.0, "seconds of measured calls per case"),
    ("--min-runs", int, 3, "measured calls per case at least"),
    (
        "--max-case-seconds", float, 30.0,
        "cases whose warm-up call is slow get fewer runs, so that their measured calls take "
        "about this long at most",
    ),
    ("--matmul-size", int, 2048, "square fp32 matmul reference"),
    (
        "--cumsum-limit-gib", float, 4.0,
        "skip the textbook cumsum when its (B,H,N,M,Dv) tensor exceeds this",
    ),
    (
        "--sdpa-limit-gib", float, 8.0,
        "skip SDPA when torch would take the math path and its n x n scores exceed this",
    ),
    (
        "--sdpa-max-length", int, 0,
        "skip CPU SDPA above this length: its O(n²) time dominates a sweep (one causal call at "
        "n = 65536 takes over 30 s on 2 cores); 0 for no limit",
    ),
)  # fmt: skip


def methods_arg(text: str) -> tuple[str, ...]:
    """Parse ``favor,sdpa`` into known method names, in the table's order."""
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(METHODS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"methods must be some of {', '.join(METHODS)}; got {text!r}"
        )
    return tuple(method for method in METHODS if method in chosen)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--case`` is internal (one case, run in a child process)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention",
        description="Time FAVOR+ (non-causal, chunked causal, textbook cumsum causal) against "
        "torch SDPA on CPU in fp32, measure each case's peak memory in a fresh process, and "
        "compare achieved GFLOP/s with a matmul measured in the same run. Prints a markdown "
        "table and writes attention.md, attention.json and attention.png to --out-dir.",
    )
    add_sizes_options(parser, "--lengths", DEFAULT_LENGTHS, QUICK_LENGTHS, "sequence lengths")
    parser.add_argument(
        "--methods",
        type=methods_arg,
        default=None,
        help="comma-separated methods to run, of " + ", ".join(METHODS) + " (default: all that "
        "can run here; the *_cuda ones need a CUDA device)",
    )
    add_number_options(parser, NUMBER_OPTIONS)
    harness.add_arguments(parser, max_minutes=13.0)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="where attention.md and attention.png go (default: benchmarks/results/)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths = QUICK_LENGTHS
    if args.methods is None and not args.case:
        args.methods = available_methods()
    return args


def run(args: argparse.Namespace) -> dict:
    """Run the sweep, print its table, write attention.md, .png and .json; the JSON report.

    ``python -m benchmarks`` calls this with options from :func:`parse_args`.
    """
    cfg = Config(args.batch, args.heads, args.dim_head, args.features, args.chunk_size)
    timing = Timing(args.budget, args.min_runs, args.max_case_seconds)
    started = time.perf_counter()
    matmul, results = run_sweep(args, CaseRunner(CASE_MODULE, args), cfg, timing)
    header = render_header(args, cfg, matmul, time.perf_counter() - started)
    table = render_table(matmul, results, args.max_other_load)
    print(f"matmul reference: {matmul['gflops']:.1f} GFLOP/s\n")
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "attention.md").write_text(f"{header}\n\n{table}\n")
    plot(results, args.out_dir / "attention.png", args.max_other_load)
    report = json_report(cfg, matmul, results)
    write_json(args.out_dir / "attention.json", report)
    files = ["attention.md", "attention.json", "attention.png"]
    say_written(files, args.out_dir, time.perf_counter() - started)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep (or, with ``--case``, a single case) and report."""
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
