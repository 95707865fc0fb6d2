"""The approximation benchmark's figure: error against M, one panel per regime."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.approx_inputs import REGIMES
from benchmarks.approx_report import index_cells, rankable
from benchmarks.approx_variants import LARA, NOT_SOFTMAX_KERNELS, UNIFORM, VARIANTS
from benchmarks.report import log_axes, pyplot, save_figure
from favor.ops import KERNELS, PROJECTIONS

# One line per kernel with this projection, and a band over the projections of one kernel.
PLOT_PROJECTION = "orf"
BAND_KERNEL = "posrf"
# Errors above this are off the chart (worse than predicting zero) and listed instead.
PLOT_MAX_ERROR = 2.0


def minor_tick_label(y: float, _position: object = None) -> str:
    """``"0.3"`` at 2, 3 and 5 times a power of ten, else nothing: a log axis's minor labels."""
    if y <= 0:
        return ""
    mantissa = round(y / 10 ** math.floor(math.log10(y)), 6)
    return f"{y:g}" if mantissa in (2, 3, 5) else ""


def draw_band(axis: Any, by_key: dict, regime: str, features: Sequence[int]) -> None:
    """Grey band from the best to the worst projection of :data:`BAND_KERNEL` at each M."""
    band = []
    for m in features:
        cells = [by_key.get((f"{BAND_KERNEL}/{p}", regime, m)) for p in PROJECTIONS]
        means = [cell["mean"] for cell in cells if rankable(cell)]
        if means:
            band.append((m, min(means), min(max(means), PLOT_MAX_ERROR)))
    if band:
        ms, lows, highs = zip(*band, strict=True)
        axis.fill_between(
            ms, lows, highs, color="0.88", label=f"{BAND_KERNEL}, best to worst projection"
        )


def draw_lines(axis: Any, by_key: dict, regime: str, features: Sequence[int]) -> list[str]:
    """Error against M with std bars, one line per plotted variant; what went off scale."""
    lines = [f"{k}/{PLOT_PROJECTION}" for k in KERNELS if k not in NOT_SOFTMAX_KERNELS]
    lines += ["posrf/gaussian", LARA]
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
            color=f"C{index}", label=VARIANTS[variant].label,
        )  # fmt: skip
    uniform = by_key.get((UNIFORM, regime, features[0]))
    if uniform is not None and "mean" in uniform:
        label = VARIANTS[UNIFORM].label
        axis.axhline(uniform["mean"], color="black", linestyle=":", label=label)
    return off_scale


def format_error_axis(axis: Any, features: Sequence[int]) -> None:
    """Cap the error axis at :data:`PLOT_MAX_ERROR`, label it in plain decimals, tick every M.

    Minor ticks: all labelled when the panel spans less than a decade (else it may have no
    label at all), else at 2, 3 and 5 x 10^k.
    """
    from matplotlib.ticker import FuncFormatter

    bottom, top = axis.get_ylim()
    axis.set_ylim(bottom, min(top, PLOT_MAX_ERROR))
    # Plain decimals ("0.3", not "3 x 10^-1").
    axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    bottom, top = axis.get_ylim()
    narrow = math.log10(top / bottom) < 1
    minor = (lambda y, _: f"{y:g}") if narrow else minor_tick_label
    axis.yaxis.set_minor_formatter(FuncFormatter(minor))
    axis.set_xticks(list(features), [str(m) for m in features])


def plot(cells: list[dict], regimes: Sequence[str], features: Sequence[int], path: Path) -> None:
    """One panel per regime: error vs M, log-log, one line per kernel with ORF, LARA, baselines.

    Error bars are the std across seeds. The grey band spans the best to the worst projection
    for PosRF. Errors above :data:`PLOT_MAX_ERROR` (TrigRF and sgq blow-ups) would squash every
    other line, so the axis stops there and the panel lists what it left out.
    """
    by_key = index_cells(cells)
    plt = pyplot()
    figure, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 4.4), squeeze=False)
    for index, (axis, regime) in enumerate(zip(axes[0], regimes, strict=True)):
        draw_band(axis, by_key, regime, features)
        off_scale = draw_lines(axis, by_key, regime, features)
        if off_scale:
            # Top right: at the largest M the lines are at their lowest.
            axis.text(
                0.98, 0.98, "off scale: " + ", ".join(off_scale), transform=axis.transAxes,
                fontsize="x-small", horizontalalignment="right", verticalalignment="top",
                wrap=True,
            )  # fmt: skip
        causality = "causal" if REGIMES[regime].causal else "non-causal"
        log_axes(
            axis,
            xlabel="nb_features M",
            ylabel="relative RMS error vs softmax" if index == 0 else "",
            title=f"{regime} ({causality})",
        )
        format_error_axis(axis, features)
    # From every panel: a line left out of the first (all off scale) still needs its entry.
    legend = {}
    for axis in axes[0]:
        for handle, text in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    handles, labels = list(legend.values()), list(legend)
    figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    save_figure(figure, path)
