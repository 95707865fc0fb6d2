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

Variants, each at ``nb_features = M`` for every ``M`` in ``--features``:

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
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.machine import cpu_model
from favor.ops import KERNELS, PROJECTIONS, FavorAttention, LaraAttention

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
CHAR_LM_DIR = REPO_ROOT / "samples" / "char_lm"
DEFAULT_FEATURES = (16, 64, 256)
QUICK_FEATURES = (16, 64)
DEFAULT_SEEDS = 5
QUICK_SEEDS = 2
# Synthetic inputs: B = 1, H heads of N tokens, head size D.
HEADS, LENGTH, DIM = 4, 256, 64
# The sample LM's training window and the share of the corpus it held out (as train.py).
CHAR_LM_LENGTH = 256
CHAR_LM_VAL_FRACTION = 0.1
DATA_SEED = 1234
LARA_MAX_PROPOSALS = 8
LARA = "lara"
UNIFORM = "uniform"
# Rows that do not estimate the softmax kernel: reported, but marked and not ranked.
NOT_SOFTMAX = ("relu", UNIFORM)
# Compact table (approx.md): the Spectraformer grid, the other kernels with ORF, LARA, and the
# original iid PosRF as the baseline.
SPECTRAFORMER_KERNELS = ("posrf", "oprf", "saderf")
SPECTRAFORMER_PROJECTIONS = ("orf", "sorf", "qmc", "mm", "sgq", "fastfoodl")
COMPACT_VARIANTS = (
    "posrf/gaussian",
    *(f"{k}/{p}" for k in SPECTRAFORMER_KERNELS for p in SPECTRAFORMER_PROJECTIONS),
    "hyperbolic/orf",
    "trigrf/orf",
    "gerf/orf",
    LARA,
    UNIFORM,
)
# Plot: one line per kernel with this projection, and a band over the projections of one kernel.
PLOT_PROJECTION = "orf"
BAND_KERNEL = "posrf"
# Plot: errors above this are off the chart (worse than predicting zero) and listed instead.
PLOT_MAX_ERROR = 2.0


@dataclass(frozen=True)
class Regime:
    """A family of inputs; synthetic when ``q_std`` is set, else captured from the char-LM."""

    name: str
    causal: bool
    description: str
    q_std: float | None = None
    k_std: float | None = None


REGIMES = {
    regime.name: regime
    for regime in (
        Regime(
            "small", False, f"Gaussian, q, k std 0.25, H={HEADS}, N={LENGTH}, D={DIM}", 0.25, 0.25
        ),
        Regime(
            "moderate", False, f"Gaussian, q, k std 0.5, H={HEADS}, N={LENGTH}, D={DIM}", 0.5, 0.5
        ),
        Regime(
            "skewed",
            False,
            f"Gaussian, q std 0.71, k std 0.35, H={HEADS}, N={LENGTH}, D={DIM}",
            0.5 * math.sqrt(2),
            0.5 / math.sqrt(2),
        ),
        Regime("char-lm", False, "sample char-LM q, k, v, 3 layers x 4 heads, N=256, D=32"),
        Regime("char-lm-causal", True, "the same, causal"),
    )
}
DEFAULT_REGIMES = ("small", "moderate", "char-lm", "char-lm-causal")


@dataclass(frozen=True)
class Inputs:
    """Float32 ``q, k (1, H, N, D)`` and ``v (1, H, N, Dv)`` of one regime.

    The heads come in ``groups`` equal runs that one module serves in the source model (the
    char-LM's layers). Each run gets its own module, so calibration pools statistics over one
    layer's heads, as it would in that model, not over every layer's.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    groups: int = 1

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(q, k, v)`` for each group of heads."""
        parts = (x.chunk(self.groups, dim=1) for x in (self.q, self.k, self.v))
        return list(zip(*parts, strict=True))


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def synthetic_inputs(q_std: float, k_std: float) -> Inputs:
    """Gaussian ``q, k (1, H, N, D)`` with the given stds, and standard normal ``v``."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    shape = (1, HEADS, LENGTH, DIM)
    q = torch.randn(shape, generator=generator) * q_std
    k = torch.randn(shape, generator=generator) * k_std
    v = torch.randn(shape, generator=generator)
    return Inputs(q, k, v)


def char_lm_inputs() -> Inputs:
    """q, k, v of every attention layer of the sample LM on held-out text, stacked along heads."""
    # Imported here: the synthetic regimes need neither the exporter nor the checkpoint.
    from favor.exporter import load_model

    model = load_model(CHAR_LM_DIR / "char_lm.pt").module.eval()
    vocab = json.loads((CHAR_LM_DIR / "vocab.json").read_text(encoding="utf-8"))
    text = (CHAR_LM_DIR / "corpus.txt").read_text(encoding="utf-8")
    held_out = text[int(len(text) * (1 - CHAR_LM_VAL_FRACTION)) :][:CHAR_LM_LENGTH]
    index = {char: i for i, char in enumerate(vocab)}
    tokens = torch.tensor([[index[char] for char in held_out]], dtype=torch.int64)

    captured: list[tuple[torch.Tensor, ...]] = []

    def record(_module: nn.Module, args: tuple) -> None:
        # FavorAttention's positional arguments start q, k, v: after projections and rotary.
        captured.append(tuple(arg.detach().clone() for arg in args[:3]))

    layers = [m for m in model.modules() if isinstance(m, FavorAttention)]
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.inference_mode():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(layers):
        raise RuntimeError(f"captured {len(captured)} attention calls for {len(layers)} layers")
    q, k, v = (torch.cat(parts, dim=1) for parts in zip(*captured, strict=True))
    return Inputs(q, k, v, groups=len(layers))


def regime_inputs(regime: Regime, cache: dict[str, Inputs]) -> Inputs:
    """The regime's float32 inputs; the char-LM capture is shared by its two regimes."""
    if regime.q_std is not None and regime.k_std is not None:
        return synthetic_inputs(regime.q_std, regime.k_std)
    if "char-lm" not in cache:
        cache["char-lm"] = char_lm_inputs()
    return cache["char-lm"]


def input_stats(q: torch.Tensor, k: torch.Tensor) -> dict:
    """Mean ``|q|^2 / sqrt(D)`` and ``|k|^2 / sqrt(D)``: what makes positive features hard."""
    root_d = q.shape[-1] ** 0.5
    return {
        "shape": list(q.shape),
        "q_sq_norm_over_sqrt_d": (q.double().pow(2).sum(-1) / root_d).mean().item(),
        "k_sq_norm_over_sqrt_d": (k.double().pow(2).sum(-1) / root_d).mean().item(),
    }


# ---------------------------------------------------------------------------------------------
# Variants and errors
# ---------------------------------------------------------------------------------------------


def variant_names() -> list[str]:
    """Every ``kernel/projection`` pair in library order, then LARA and the uniform baseline."""
    return [f"{k}/{p}" for k in KERNELS for p in PROJECTIONS] + [LARA, UNIFORM]


def is_softmax_estimator(variant: str) -> bool:
    """Whether the variant estimates softmax attention (not relu, not the uniform baseline)."""
    return variant.split("/")[0] not in NOT_SOFTMAX


def uniform_attention(v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Equal weights on every (causal: every earlier) key: the mean of the values.

    An estimator whose error is not clearly below this one's has no skill on those inputs.
    """
    if not causal:
        return v.mean(dim=-2, keepdim=True).expand_as(v)
    counts = torch.arange(1, v.shape[-2] + 1, dtype=v.dtype, device=v.device).unsqueeze(-1)
    return v.cumsum(dim=-2) / counts


def build(variant: str, dim: int, features: int, seed: int, causal: bool) -> nn.Module:
    """The module for one variant; ValueError or NotImplementedError where it does not apply."""
    if variant == LARA:
        proposals = min(LARA_MAX_PROPOSALS, features)
        return LaraAttention(
            dim, features, num_proposals=proposals, seed=seed, causal=causal
        ).eval()
    kernel, projection = variant.split("/")
    return FavorAttention(
        dim, features, kernel=kernel, projection=projection, seed=seed, causal=causal
    ).eval()


def approximate(
    module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """One call; data-dependent kernels are calibrated on the same q, k where they need it."""
    if isinstance(module, FavorAttention) and (
        module.kernel == "gerf" or (module.causal and module.kernel in ("oprf", "saderf"))
    ):
        # GERF would start at PosRF; causal OPRF/SADERF read frozen statistics (all-zero: PosRF).
        module.calibrate_(q, k)
    return module(q, k, v)


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS of the difference over RMS of the expected value (as ``tests/helpers.py``)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def summarize(errors: list[float]) -> dict:
    """Mean, sample std, min and max over the finite errors, and how many were not finite."""
    finite = [e for e in errors if math.isfinite(e)]
    summary: dict = {"nonfinite": len(errors) - len(finite)}
    if finite:
        summary.update(
            mean=statistics.fmean(finite),
            std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
            min=min(finite),
            max=max(finite),
        )
    return summary


def measure_cell(
    variant: str, regime: Regime, inputs: Inputs, exact: torch.Tensor, features: int, seeds: int
) -> dict:
    """Errors of one variant at one ``M`` on one regime, for every seed; never raises."""
    cell: dict = {"variant": variant, "regime": regime.name, "nb_features": features}
    if "/" in variant:
        cell["kernel"], cell["projection"] = variant.split("/")
    errors: list[float] = []
    if variant == UNIFORM:
        error = rel_rms_error(uniform_attention(inputs.v.double(), regime.causal), exact)
        cell.update(status="ok", errors=[error], **summarize([error]))
        return cell
    for seed in range(seeds):
        outputs = []
        for q, k, v in inputs.split():
            try:
                module = build(variant, q.shape[-1], features, seed, regime.causal)
            except (ValueError, NotImplementedError) as error:
                # The variant does not exist here (mm with M <= D, causal LARA): not a failure.
                cell.update(status="n/a", reason=" ".join(str(error).split())[:200])
                return cell
            except Exception as error:  # a report must survive any one variant's failure
                cell.update(status="error", reason=f"{type(error).__name__}: {error}"[:200])
                return cell
            if isinstance(module, FavorAttention):
                cell["feature_dim"] = module.feature_dim
            try:
                with torch.no_grad():
                    outputs.append(approximate(module, q, k, v))
            except Exception as error:  # a report must survive any one variant's failure
                cell.update(status="error", reason=f"{type(error).__name__}: {error}"[:200])
                return cell
        errors.append(rel_rms_error(torch.cat(outputs, dim=1), exact))
    cell.update(status="ok", errors=errors, **summarize(errors))
    return cell


def run_regime(regime: Regime, inputs: Inputs, args: argparse.Namespace) -> list[dict]:
    """Every variant at every ``M`` on one regime's inputs."""
    # The reference in float64, so its own rounding is far below any estimator's error.
    q, k, v = (x.double() for x in (inputs.q, inputs.k, inputs.v))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=regime.causal)
    return [
        measure_cell(variant, regime, inputs, exact, features, args.seeds)
        for variant in variant_names()
        for features in args.features
    ]


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def format_cell(cell: dict | None) -> str:
    """``mean ± std``; n/a, error, or non-finite seeds spelled out."""
    if cell is None:
        return ""
    if cell["status"] != "ok":
        return cell["status"]
    errors = cell["errors"]
    if "mean" not in cell:
        return "inf" if any(math.isinf(e) for e in errors) else "nan"
    text = f"{cell['mean']:.3g} ± {cell['std']:.2g}"
    if cell["nonfinite"]:
        text += f" ({cell['nonfinite']}/{len(errors)} non-finite)"
    return text


def label(variant: str) -> str:
    """Row label: LARA with its proposal rule, relu marked as not a softmax estimator."""
    if variant == LARA:
        return f"lara (C=min({LARA_MAX_PROPOSALS},M))"
    if variant == UNIFORM:
        return "uniform (mean of v) †"
    return variant if is_softmax_estimator(variant) else f"{variant} †"


def index_cells(cells: list[dict]) -> dict[tuple[str, str, int], dict]:
    """``(variant, regime, M) -> cell``."""
    return {(c["variant"], c["regime"], c["nb_features"]): c for c in cells}


def rankable(cell: dict | None) -> bool:
    """A softmax estimator's cell with every seed finite: eligible for best and summaries."""
    return (
        cell is not None
        and cell["status"] == "ok"
        and cell["nonfinite"] == 0
        and is_softmax_estimator(cell["variant"])
    )


def best_variants(cells: list[dict], regimes: Sequence[str], features: Sequence[int]) -> dict:
    """``(regime, M) -> cell`` with the lowest mean error among rankable cells."""
    best = {}
    for regime in regimes:
        for m in features:
            candidates = [
                c for c in cells if c["regime"] == regime and c["nb_features"] == m and rankable(c)
            ]
            if candidates:
                best[regime, m] = min(candidates, key=lambda c: c["mean"])
    return best


def ratio_summary(
    cells: list[dict], regimes: Sequence[str], features: Sequence[int], group: str, baseline: str
) -> dict[tuple[str, str, int], float]:
    """Median, over the other axis, of error / the ``baseline``'s error on the same row.

    ``group="projection"`` compares each projection with ``baseline`` (e.g. iid Gaussian) kernel
    by kernel; ``group="kernel"`` compares each kernel with ``baseline`` projection by
    projection. The median, because TrigRF and sgq blow up now and then and a mean would report
    those outliers rather than the typical effect. Pairs where either side is n/a or has a
    non-finite seed are skipped.
    """
    by_key = index_cells(cells)
    names, others = (PROJECTIONS, KERNELS) if group == "projection" else (KERNELS, PROJECTIONS)
    result = {}
    for name in names:
        for regime, m in columns(regimes, features):
            ratios = []
            for other in others:
                if group == "projection":
                    this, ref = f"{other}/{name}", f"{other}/{baseline}"
                else:
                    this, ref = f"{name}/{other}", f"{baseline}/{other}"
                cell, ref_cell = by_key.get((this, regime, m)), by_key.get((ref, regime, m))
                if rankable(cell) and rankable(ref_cell) and ref_cell["mean"] > 0:
                    ratios.append(cell["mean"] / ref_cell["mean"])
            if ratios:
                result[name, regime, m] = statistics.median(ratios)
    return result


def columns(regimes: Sequence[str], features: Sequence[int]) -> list[tuple[str, int]]:
    return [(regime, m) for regime in regimes for m in features]


def render_text_table(cells: list[dict], regimes: Sequence[str], features: Sequence[int]) -> str:
    """Every variant, aligned for a terminal: rows variants, columns regime x M."""
    by_key = index_cells(cells)
    cols = columns(regimes, features)
    header = ["variant", *(f"{regime} M={m}" for regime, m in cols)]
    rows = [
        [label(v), *(format_cell(by_key.get((v, regime, m))) for regime, m in cols)]
        for v in variant_names()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_markdown_table(
    cells: list[dict],
    variants: Sequence[str],
    regimes: Sequence[str],
    features: Sequence[int],
    best: dict,
) -> str:
    """Rows ``variants``, columns regime x M; each column's best overall variant in bold."""
    by_key = index_cells(cells)
    cols = columns(regimes, features)
    lines = [
        "| variant | " + " | ".join(f"{regime} M={m}" for regime, m in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for variant in variants:
        texts = []
        for regime, m in cols:
            cell = by_key.get((variant, regime, m))
            text = format_cell(cell)
            if cell is not None and best.get((regime, m)) is cell:
                text = f"**{text}**"
            texts.append(text)
        lines.append(f"| {label(variant)} | " + " | ".join(texts) + " |")
    lines.append(
        "| best of all variants | "
        + " | ".join(best[col]["variant"] if col in best else "" for col in cols)
        + " |"
    )
    return "\n".join(lines)


def render_ratio_table(
    ratios: dict, names: Sequence[str], regimes: Sequence[str], features: Sequence[int], what: str
) -> str:
    """A markdown table of :func:`ratio_summary` values; blank where nothing was comparable."""
    cols = columns(regimes, features)
    lines = [
        f"| {what} | " + " | ".join(f"{regime} M={m}" for regime, m in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in names:
        values = [ratios.get((name, regime, m)) for regime, m in cols]
        if all(value is None for value in values):
            continue
        texts = ["" if value is None else f"{value:.2f}" for value in values]
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def render_best(
    cells: list[dict], best: dict, regimes: Sequence[str], features: Sequence[int]
) -> str:
    """One line per regime and M: the variant with the lowest mean error, and the uniform one's."""
    by_key = index_cells(cells)
    lines = []
    for regime, m in columns(regimes, features):
        cell = best.get((regime, m))
        text = f"{cell['variant']:<16s} {format_cell(cell)}" if cell else "none finite"
        uniform = by_key.get((UNIFORM, regime, m))
        if uniform is not None and "mean" in uniform:
            text += f"   (uniform: {uniform['mean']:.3g})"
        lines.append(f"  {regime:<15s} M={m:<4d} {text}")
    return "\n".join(lines)


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

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "commit": git_commit(),
        "elapsed_s": round(elapsed_s, 1),
    }


def compact_variants(best: dict) -> list[str]:
    """:data:`COMPACT_VARIANTS`, plus any column's winner not among them (before LARA)."""
    winners = [cell["variant"] for cell in best.values()]
    extra = [v for v in dict.fromkeys(winners) if v not in COMPACT_VARIANTS]
    at = COMPACT_VARIANTS.index(LARA)
    return [*COMPACT_VARIANTS[:at], *extra, *COMPACT_VARIANTS[at:]]


def render_markdown(
    cells: list[dict], args: argparse.Namespace, env: dict, stats: dict[str, dict]
) -> str:
    """``approx.md``: setup, the compact table, and the projection and kernel summaries."""
    regimes, features = args.regimes, args.features
    best = best_variants(cells, regimes, features)
    by_projection = ratio_summary(cells, regimes, features, "projection", "gaussian")
    by_kernel = ratio_summary(cells, regimes, features, "kernel", "posrf")
    regime_lines = [
        f"- `{name}`: {REGIMES[name].description}; mean |q|²/√D = "
        f"{stats[name]['q_sq_norm_over_sqrt_d']:.3g}, |k|²/√D = "
        f"{stats[name]['k_sq_norm_over_sqrt_d']:.3g}"
        for name in regimes
    ]
    softmax_kernels = [k for k in KERNELS if k not in NOT_SOFTMAX]
    rows = compact_variants(best)
    extra = [v for v in rows if v not in COMPACT_VARIANTS]
    winners_note = f" ({', '.join(extra)}: a column's winner, shown too)" if extra else ""
    return "\n".join(
        [
            "# Approximation error against exact softmax attention",
            "",
            "Relative RMS error `RMS(approx - exact) / RMS(exact)` of the attention output, mean ± "
            f"std over {args.seeds} projection seeds, against float64 SDPA; lower is better. "
            f"M = nb_features (hyperbolic and trigrf use 2M features). Method: "
            "`benchmarks/approx.py`; every variant and seed: `approx.json`.",
            "",
            *regime_lines,
            f"- {env['date']}, {env['cpu']}, torch {env['torch']}, commit {env['commit']}, "
            f"{env['elapsed_s'] / 60:.1f} min",
            "",
            render_markdown_table(cells, rows, regimes, features, best),
            "",
            "Bold: the lowest mean error of all variants (every kernel and projection, and LARA) "
            f"in that column{winners_note}. † not ranked: relu is not a softmax estimator, "
            "uniform (equal weights) is the no-skill baseline. LARA: C = min(8, M) proposals, "
            "non-causal only. n/a: the variant does not exist there (mm needs M > D).",
            "",
            "## Projections: error relative to iid Gaussian",
            "",
            "Median over the kernels "
            f"({', '.join(softmax_kernels)}) of error / the same kernel's error with the "
            "`gaussian` projection; below 1 is better than iid.",
            "",
            render_ratio_table(by_projection, PROJECTIONS, regimes, features, "projection"),
            "",
            "## Kernels: error relative to PosRF",
            "",
            "Median over the projections of error / PosRF's error with the same "
            "projection; below 1 is better than PosRF.",
            "",
            render_ratio_table(by_kernel, softmax_kernels, regimes, features, "kernel"),
            "",
        ]
    )


def minor_tick_label(y: float, _position: object = None) -> str:
    """``"0.3"`` at 2, 3 and 5 times a power of ten, else nothing: a log axis's minor labels."""
    if y <= 0:
        return ""
    mantissa = round(y / 10 ** math.floor(math.log10(y)), 6)
    return f"{y:g}" if mantissa in (2, 3, 5) else ""


def plot(cells: list[dict], args: argparse.Namespace, path: Path) -> None:
    """One panel per regime: error vs M, log-log, one line per kernel with ORF, LARA, baselines.

    Error bars are the std across seeds. The grey band spans the best to the worst projection
    for PosRF. Errors above :data:`PLOT_MAX_ERROR` (TrigRF and sgq blow-ups) would squash every
    other line, so the axis stops there and the panel lists what it left out.
    """
    import matplotlib

    # Agg needs no display; select it before pyplot is imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    by_key = index_cells(cells)
    regimes, features = args.regimes, args.features
    figure, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 4.4), squeeze=False)
    lines = [f"{k}/{PLOT_PROJECTION}" for k in KERNELS if k not in NOT_SOFTMAX]
    lines += ["posrf/gaussian", LARA]
    for axis, regime in zip(axes[0], regimes, strict=True):
        band = [
            (
                m,
                [
                    c["mean"]
                    for p in PROJECTIONS
                    if rankable(c := by_key.get((f"{BAND_KERNEL}/{p}", regime, m)))
                ],
            )
            for m in features
        ]
        band = [(m, means) for m, means in band if means]
        if band:
            axis.fill_between(
                [m for m, _ in band],
                [min(means) for _, means in band],
                [min(max(means), PLOT_MAX_ERROR) for _, means in band],
                color="0.88",
                label=f"{BAND_KERNEL}, best to worst projection",
            )
        off_scale = []
        for index, variant in enumerate(lines):
            points = [
                (m, cell["mean"], cell["std"])
                for m in features
                if rankable(cell := by_key.get((variant, regime, m)))
            ]
            if any(mean > PLOT_MAX_ERROR for _, mean, _ in points):
                worst = max(mean for _, mean, _ in points)
                off_scale.append(f"{variant} (up to {worst:.3g})")
            # Off-scale points are left out rather than clipped: their error bars would span
            # the whole panel.
            points = [point for point in points if point[1] <= PLOT_MAX_ERROR]
            if not points:
                continue
            ms, means, stds = zip(*points, strict=True)
            # A log axis cannot show a bar reaching zero; keep the lower bar above it.
            lower = [min(std, 0.9 * mean) for mean, std in zip(means, stds, strict=True)]
            style = "--" if variant == "posrf/gaussian" else "-"
            # A fixed colour per variant: skipped lines must not shift the others' colours.
            axis.errorbar(
                ms, means, yerr=(lower, stds), fmt=f"o{style}", capsize=3, markersize=4,
                color=f"C{index}", label=label(variant),
            )  # fmt: skip
        uniform = by_key.get((UNIFORM, regime, features[0]))
        if uniform is not None and "mean" in uniform:
            axis.axhline(uniform["mean"], color="black", linestyle=":", label=label(UNIFORM))
        if off_scale:
            # Top right: at the largest M the lines are at their lowest.
            axis.text(
                0.98, 0.98, "off scale: " + ", ".join(off_scale), transform=axis.transAxes,
                fontsize="x-small", horizontalalignment="right", verticalalignment="top",
                wrap=True,
            )  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        bottom, top = axis.get_ylim()
        axis.set_ylim(bottom, min(top, PLOT_MAX_ERROR))
        # Plain decimals ("0.3", not "3 x 10^-1"). Minor ticks: all labelled when the panel
        # spans less than a decade (else it may have no label at all), else 2, 3 and 5 x 10^k.
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        bottom, top = axis.get_ylim()
        narrow = math.log10(top / bottom) < 1
        minor = (lambda y, _: f"{y:g}") if narrow else minor_tick_label
        axis.yaxis.set_minor_formatter(FuncFormatter(minor))
        axis.set_xticks(list(features), [str(m) for m in features])
        axis.set_xlabel("nb_features M")
        axis.set_title(f"{regime} ({'causal' if REGIMES[regime].causal else 'non-causal'})")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative RMS error vs softmax")
    # From every panel: a line left out of the first (all off scale) still needs its entry.
    legend = {}
    for axis in axes[0]:
        for handle, text in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    handles, labels = list(legend.values()), list(legend)
    figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def json_ready(value: object) -> object:
    """NaN and inf as strings: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def write_outputs(
    cells: list[dict], args: argparse.Namespace, env: dict, stats: dict[str, dict]
) -> None:
    """``approx.md``, ``approx.json`` and ``approx.png`` in ``--out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "approx.md").write_text(render_markdown(cells, args, env, stats), encoding="utf-8")
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
    text = json.dumps(json_ready(payload), indent=1)
    (args.out / "approx.json").write_text(text + "\n", encoding="utf-8")
    plot(cells, args, args.out / "approx.png")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def list_arg(convert: Callable[[str], object]) -> Callable[[str], tuple]:
    """An argparse type for comma-separated values."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(part.strip()) for part in text.split(",") if part.strip())
        except (ValueError, KeyError) as error:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {error}") from error
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def regime_name(text: str) -> str:
    if text not in REGIMES:
        raise ValueError(f"unknown regime {text!r}; choose from {', '.join(REGIMES)}")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not >= 1")
    return value


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
        cells += run_regime(regime, inputs, args)
        print(
            f"[{name}] {len(variant_names())} variants x {len(args.features)} M x {args.seeds} "
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
    print(
        f"wrote approx.md, approx.json and approx.png to {args.out} in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
