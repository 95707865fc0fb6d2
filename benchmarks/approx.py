"""Approximation quality of every random-feature attention variant against exact softmax attention.

Run from the repository root::

    python -m benchmarks.approx                   # 5 seeds, M = 16, 64, 256, default regimes
    python -m benchmarks.approx --quick           # 2 seeds, M = 16, 64
    python -m benchmarks.approx --regimes small,skewed --seeds 10

This is a report, not a test: nothing here fails on a large error. It prints a table, and writes
``approx.md`` (compact tables for the README), ``approx.json`` (every number, per seed) and
``approx.png`` (error against M) to ``--out``. ``approx.md`` holds a subset of the rows (the
Spectraformer grid, the other kernels with ORF, LARA, baselines and each column's winner) and
two summaries: for each projection, the median over kernels of its error over the ``gaussian``
projection's error with the same kernel; for each kernel, the median over projections of its
error over PosRF's. Medians, because TrigRF and sgq blow up now and then.

Error measure: the relative RMS error ``RMS(approx - exact) / RMS(exact)`` over the whole
``(B, H, N, Dv)`` output, computed in float64. ``exact`` is
``F.scaled_dot_product_attention`` on float64 copies of the inputs; the approximations run on the
float32 inputs, as a deployed model would, so their own rounding is part of their error.

Variants (:data:`benchmarks.approx_variants.VARIANTS`), each at ``nb_features = M`` for every
``M`` in ``--features``:

* ``FavorAttention(D, M, kernel=K, projection=P, seed=s)`` for every kernel ``K`` in
  ``favor.ops.KERNELS`` and every projection ``P`` in ``favor.ops.PROJECTIONS``. Hyperbolic and
  TrigRF features come in pairs (``feature_dim = 2M``); they are compared at equal ``M``, the
  number of projection rows, so they spend twice the features (``feature_dim`` is in the JSON).
  ``mm`` needs ``M > D``; smaller ``M`` is recorded as n/a. ``fastfoodl`` is the learnable Fastfood
  projection at its initial value: nothing is trained here.
* ``relu`` is included but marked †: it defines its own kernel, ``phi(x) = relu(W x) + eps``,
  so its "error" is the distance between two different attentions, not an estimator's noise.
  Rows marked † are left out of the best-variant choice, the summaries and the plot's lines.
* Data-dependent kernels: OPRF and SADERF take their parameters from the call's own ``q`` and
  ``k`` in non-causal mode, so they are simply called. GERF's trainable parameter starts at PosRF
  unless calibrated, so ``calibrate_(q, k)`` is called first to start it at the OPRF optimum (no
  training happens here). GERF then differs from non-causal OPRF only in that its ``a`` is one
  per module, from statistics pooled over the heads, where OPRF takes one per head. In causal mode
  OPRF and SADERF read frozen statistics, so they are calibrated on the same ``q`` and ``k`` too:
  an oracle calibration (a deployed model calibrates on training data), which looks ahead only
  through four per-coordinate means.
* ``LaraAttention(D, M, num_proposals=min(8, M), seed=s).eval()``: LARA with up to eight
  segment-mean proposals (``M / 8`` samples each at ``M >= 8``). It is bidirectional only, so it
  is n/a in causal regimes.
* ``uniform`` †, a baseline: the mean of the values (the running mean when causal), i.e.
  attention with equal weights. Softmax attention on small-norm inputs is nearly uniform, so this
  row shows how much of a variant's error is noise rather than signal: a variant whose error is
  not below it has no skill on those inputs.

Seeds ``0 .. --seeds - 1`` seed the projections (and LARA's noise). The inputs of each regime are
fixed, so the spread (sample standard deviation across seeds, min and max in the JSON) is the
estimator's own variability. A seed whose output is not finite is recorded as ``nan`` / ``inf``
and left out of the mean; the cell says how many.

Regimes (``B = 1``):

* ``small``: q, k, v Gaussian, ``H = 4, N = 256, D = 64``, q and k entries ``N(0, 0.25^2)``, so
  ``|q|^2 / sqrt(D)`` is about 0.5: the easy case, nearly uniform attention.
* ``moderate``: as ``small`` with std 0.5 for q and k (``|q|^2 / sqrt(D)`` about 2), the scale of
  ``tests/helpers.qkv``.
* ``skewed`` (not run by default): q std ``0.5 sqrt 2``, k std ``0.5 / sqrt 2``, so the logits
  ``q . k`` are distributed as in ``moderate`` but queries are twice as long as keys, as in
  trained models (the char-LM's are 1.5 to 1.8 times as long). SADERF's rescaling targets this.
* ``char-lm``: q, k, v captured from the trained sample model ``samples/char_lm/char_lm.pt``
  (``D = 32``, 4 heads, 3 layers) on the first 256 characters of its held-out text (the last 10%
  of ``corpus.txt``; 256 is its training window). A forward pre-hook on each layer's
  ``FavorAttention`` records its ``q, k, v``, after the model's projections and rotary embedding;
  all three layers are stacked along the heads (``H = 12``), and each layer's four heads get
  their own module (calibration pools over a module's heads, so a shared one would mix the
  layers' statistics). Their norms are large (``|q|^2 / sqrt(D)`` from about 16 in the first
  layer to about 100 in the later ones), the hard regime for positive random features. The model is causal, but this regime compares
  bidirectional attention on those inputs, which every variant supports.
* ``char-lm-causal``: the same inputs, causal: ``FavorAttention(..., causal=True)`` (chunked,
  ``chunk_size`` 64) against SDPA with ``is_causal=True``.

The sample model was trained through its own PosRF/ORF approximation with ``M = 64``, so exact
softmax attention is not what it computes; the char-LM regimes measure the estimators on
realistic inputs, not the model's quality.

Torch runs single-threaded: the calls are tiny, and on a shared machine intra-op threads that
lose their core stall every op (a 5 ms call took 150 ms with two threads). The numbers do not
depend on the thread count beyond float32 summation order.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.approx_inputs import DEFAULT_REGIMES, REGIMES, Inputs, input_stats, regime_inputs
from benchmarks.approx_plot import plot
from benchmarks.approx_report import (
    best_variants,
    render_best,
    render_markdown,
    render_text_table,
)
from benchmarks.approx_variants import LARA_MAX_PROPOSALS, VARIANTS, run_regime
from benchmarks.arguments import list_arg, positive_int
from benchmarks.machine import machine_info
from benchmarks.paths import REPO_ROOT, RESULTS_DIR
from benchmarks.report import say_written, write_json

DEFAULT_OUT_DIR = RESULTS_DIR
DEFAULT_FEATURES = (16, 64, 256)
QUICK_FEATURES = (16, 64)
DEFAULT_SEEDS = 5
QUICK_SEEDS = 2


def git_commit() -> str | None:
    """The checked-out commit (read-only), so a results file can be traced to its code."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def environment(elapsed_s: float) -> dict:
    """Machine, software and date: what the numbers (and the runtime) depend on."""
    import numpy

    machine = machine_info()
    return {
        "date": machine["date"],
        "cpu": machine["cpu"],
        "logical_cores": machine["cores"],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": machine["torch"],
        "numpy": numpy.__version__,
        "commit": git_commit(),
        "elapsed_s": round(elapsed_s, 1),
    }


def write_outputs(
    cells: list[dict], args: argparse.Namespace, env: dict, stats: dict[str, dict]
) -> None:
    """``approx.md``, ``approx.json`` and ``approx.png`` in ``--out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    text = render_markdown(cells, args.regimes, args.features, args.seeds, env, stats)
    (args.out / "approx.md").write_text(text, encoding="utf-8")
    payload = {
        "environment": env,
        "settings": {
            "seeds": args.seeds,
            "nb_features": list(args.features),
            "regimes": {name: vars(REGIMES[name]) | stats[name] for name in args.regimes},
            "lara_num_proposals": f"min({LARA_MAX_PROPOSALS}, M)",
            "error": "RMS(approx - exact) / RMS(exact), exact = float64 SDPA",
        },
        "results": cells,
    }
    write_json(args.out / "approx.json", payload)
    plot(cells, args.regimes, args.features, args.out / "approx.png")


def regime_name(text: str) -> str:
    """A known regime's name."""
    if text not in REGIMES:
        raise ValueError(f"unknown regime {text!r}; choose from {', '.join(REGIMES)}")
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.approx",
        description="Relative RMS error of every FAVOR kernel x projection and LARA against "
        "exact softmax attention, on synthetic and captured char-LM inputs. Prints a table and "
        "writes approx.md, approx.json and approx.png to --out.",
    )
    parser.add_argument(
        "--seeds", type=positive_int, default=None,
        help=f"projection seeds per cell (default: {DEFAULT_SEEDS}; {QUICK_SEEDS} with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--features", type=list_arg(positive_int), default=None,
        help="comma-separated nb_features M (default: 16,64,256; 16,64 with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--regimes", type=list_arg(regime_name), default=DEFAULT_REGIMES,
        help=f"comma-separated, from {', '.join(REGIMES)} (default: {','.join(DEFAULT_REGIMES)})",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 2 seeds, M = 16, 64 (unless given)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR,
        help="where approx.md, approx.json and approx.png go (default: benchmarks/results/)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    if args.features is None:
        args.features = QUICK_FEATURES if args.quick else DEFAULT_FEATURES
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every regime, print the tables, write the files."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # see the module docstring
    started = time.perf_counter()
    cache: dict[str, Inputs] = {}
    cells: list[dict] = []
    stats: dict[str, dict] = {}
    for name in args.regimes:
        regime = REGIMES[name]
        regime_started = time.perf_counter()
        inputs = regime_inputs(regime, cache)
        stats[name] = input_stats(inputs.q, inputs.k)
        cells += run_regime(regime, inputs, args.features, args.seeds)
        print(
            f"[{name}] {len(VARIANTS)} variants x {len(args.features)} M x {args.seeds} "
            f"seeds in {time.perf_counter() - regime_started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    env = environment(time.perf_counter() - started)
    print(render_text_table(cells, args.regimes, args.features))
    print(
        "\n† not a softmax estimator, not ranked: relu defines its own kernel; uniform is the "
        "mean of the values (the running mean when causal), the no-skill baseline."
    )
    print("\nbest variant (lowest mean error, every seed finite):")
    best = best_variants(cells, args.regimes, args.features)
    print(render_best(cells, best, args.regimes, args.features))
    write_outputs(cells, args, env, stats)
    say_written(["approx.md", "approx.json", "approx.png"], args.out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
