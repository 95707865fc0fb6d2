"""The approximation benchmark's tables: every cell, the best variants and the ratio summaries.

A cell is one variant at one ``M`` on one regime, as :func:`benchmarks.approx_variants.
measure_cell` records it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from benchmarks.approx_inputs import REGIMES
from benchmarks.approx_variants import LARA, NOT_SOFTMAX_KERNELS, UNIFORM, VARIANTS
from benchmarks.report import markdown_table
from favor.ops import KERNELS, PROJECTIONS

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


def index_cells(cells: list[dict]) -> dict[tuple[str, str, int], dict]:
    """``(variant, regime, M) -> cell``."""
    return {(c["variant"], c["regime"], c["nb_features"]): c for c in cells}


def rankable(cell: dict | None) -> bool:
    """A softmax estimator's cell with every seed finite: eligible for best and summaries."""
    return (
        cell is not None
        and cell["status"] == "ok"
        and cell["nonfinite"] == 0
        and VARIANTS[cell["variant"]].ranked
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
    """Every ``(regime, M)`` column, regime by regime."""
    return [(regime, m) for regime in regimes for m in features]


def column_titles(regimes: Sequence[str], features: Sequence[int]) -> list[str]:
    """``small M=16``: the header of each :func:`columns` entry."""
    return [f"{regime} M={m}" for regime, m in columns(regimes, features)]


def render_text_table(cells: list[dict], regimes: Sequence[str], features: Sequence[int]) -> str:
    """Every variant, aligned for a terminal: rows variants, columns regime x M."""
    by_key = index_cells(cells)
    cols = columns(regimes, features)
    header = ["variant", *column_titles(regimes, features)]
    rows = [
        [variant.label, *(format_cell(by_key.get((name, regime, m))) for regime, m in cols)]
        for name, variant in VARIANTS.items()
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
    rows = []
    for variant in variants:
        texts = []
        for regime, m in cols:
            cell = by_key.get((variant, regime, m))
            text = format_cell(cell)
            if cell is not None and best.get((regime, m)) is cell:
                text = f"**{text}**"
            texts.append(text)
        rows.append([VARIANTS[variant].label, *texts])
    rows.append(["best of all variants", *(best[c]["variant"] if c in best else "" for c in cols)])
    header = ["variant", *column_titles(regimes, features)]
    return markdown_table(header, rows, "l" + "r" * len(cols))


def render_ratio_table(
    ratios: dict, names: Sequence[str], regimes: Sequence[str], features: Sequence[int], what: str
) -> str:
    """A markdown table of :func:`ratio_summary` values; blank where nothing was comparable."""
    cols = columns(regimes, features)
    rows = []
    for name in names:
        values = [ratios.get((name, regime, m)) for regime, m in cols]
        if any(value is not None for value in values):
            rows.append([name, *("" if value is None else f"{value:.2f}" for value in values)])
    header = [what, *column_titles(regimes, features)]
    return markdown_table(header, rows, "l" + "r" * len(cols))


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


def compact_variants(best: dict) -> list[str]:
    """:data:`COMPACT_VARIANTS`, plus any column's winner not among them (before LARA)."""
    winners = [cell["variant"] for cell in best.values()]
    extra = [v for v in dict.fromkeys(winners) if v not in COMPACT_VARIANTS]
    at = COMPACT_VARIANTS.index(LARA)
    return [*COMPACT_VARIANTS[:at], *extra, *COMPACT_VARIANTS[at:]]


def render_markdown(
    cells: list[dict],
    regimes: Sequence[str],
    features: Sequence[int],
    seeds: int,
    env: dict,
    stats: dict[str, dict],
) -> str:
    """``approx.md``: setup, the compact table, and the projection and kernel summaries.

    ``env`` is the run's environment (date, cpu, torch, commit, elapsed_s) and ``stats`` each
    regime's input norms.
    """
    best = best_variants(cells, regimes, features)
    by_projection = ratio_summary(cells, regimes, features, "projection", "gaussian")
    by_kernel = ratio_summary(cells, regimes, features, "kernel", "posrf")
    regime_lines = [
        f"- `{name}`: {REGIMES[name].description}; mean |q|²/√D = "
        f"{stats[name]['q_sq_norm_over_sqrt_d']:.3g}, |k|²/√D = "
        f"{stats[name]['k_sq_norm_over_sqrt_d']:.3g}"
        for name in regimes
    ]
    softmax_kernels = [k for k in KERNELS if k not in NOT_SOFTMAX_KERNELS]
    rows = compact_variants(best)
    extra = [v for v in rows if v not in COMPACT_VARIANTS]
    winners_note = f" ({', '.join(extra)}: a column's winner, shown too)" if extra else ""
    return "\n".join(
        [
            "# Approximation error against exact softmax attention",
            "",
            "Relative RMS error `RMS(approx - exact) / RMS(exact)` of the attention output, mean ± "
            f"std over {seeds} projection seeds, against float64 SDPA; lower is better. "
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
