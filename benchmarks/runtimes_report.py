"""The figures of :mod:`benchmarks.runtimes`: each row's reports (one per round) reduced to
medians, and the markdown table and plot made of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import markdown_table, pyplot, save_figure
from benchmarks.runtimes_cases import Case

MIB = 1 << 20


def summarize(case: Case, start: dict, bursts: Sequence[dict]) -> dict:
    """One row from its first report (loads, cold sequence) and its interleaved bursts.

    ``step_ms`` is the median over bursts of each burst's median step, ``step_ms_iqr`` their
    quartiles; ``prefill_ms`` the median of the bursts' prefills after their first (which runs
    right after the switch from another runtime); ``tokens_per_s`` all burst
    steps over their total wall time. ``first_load_ms`` is the first session creation of a
    fresh process or page, ``load_ms`` the median of the later ones.
    """
    medians = [statistics.median(b["step_ms"]) for b in bursts]
    quartiles = statistics.quantiles(medians, n=4) if len(medians) > 1 else medians * 3
    later_loads = start["load_ms"][1:]
    return {
        "key": case.key,
        "runtime": case.runtime,
        "how": case.how,
        "module": start["module"],
        "probe": case.probe,
        "threads_requested": case.threads,
        "threads": start["threads"],
        "cross_origin_isolated": start.get("cross_origin_isolated"),
        "versions": start["versions"],
        "first_load_ms": start["load_ms"][0],
        "load_ms": statistics.median(later_loads) if later_loads else None,
        "cold_prefill_ms": start["cold_prefill_ms"],
        "cold_step_ms": statistics.median(start["cold_step_ms"]),
        "prefill_ms": statistics.median(ms for b in bursts for ms in b["prefill_ms"][1:]),
        "step_ms": statistics.median(medians),
        "step_ms_iqr": [quartiles[0], quartiles[-1]],
        "tokens_per_s": 1e3
        * sum(len(b["step_ms"]) for b in bursts)
        / sum(b["decode_ms"] for b in bursts),
        "start": start,
        "bursts": list(bursts),
    }


def threads_cell(row: dict) -> str:
    """``1``, ``2``, ``ORT default``; a browser row says whether the page was isolated."""
    if not row["threads"]:
        return "ORT default"
    if row["runtime"] != "browser":
        return str(row["threads"])
    isolated = "isolated" if row["cross_origin_isolated"] else "not isolated"
    asked = row["threads_requested"]
    used = f"{row['threads']} of {asked} asked" if row["threads"] != asked else str(asked)
    return f"{used} ({isolated})"


def render_table(rows: Sequence[dict], prefill: int) -> str:
    """The markdown table of every row; probe rows come last, marked."""
    header = [
        "runtime",
        "how",
        "threads",
        "first load ms",
        "load ms",
        f"prefill {prefill} ms",
        "first steps ms",
        "decode ms/token (IQR)",
        "tokens/s",
    ]

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"

    body = [
        [
            f"{row['runtime']}{' (probe)' if row['probe'] else ''}",
            row["how"],
            threads_cell(row),
            ms(row["first_load_ms"]),
            ms(row["load_ms"]),
            ms(row["prefill_ms"]),
            ms(row["cold_step_ms"]),
            f"{row['step_ms']:.3f} ({row['step_ms_iqr'][0]:.3f}-{row['step_ms_iqr'][1]:.3f})",
            f"{row['tokens_per_s']:.0f}",
        ]
        for row in sorted(rows, key=lambda r: r["probe"])
    ]
    return markdown_table(header, body, align="lllrrrrrr")


def plot(rows: Sequence[dict], prefill: int, path: Path) -> None:
    """Decode step (with its interquartile range over bursts) and prefill, a bar per row."""
    shown = sorted(rows, key=lambda r: r["probe"])
    labels = [f"{r['key']}{' *' if r['probe'] else ''}" for r in shown]
    positions = range(len(shown))
    figure, (decode_axis, prefill_axis) = pyplot().subplots(
        1, 2, figsize=(11, 0.35 * len(shown) + 1.5), sharey=True
    )
    steps = [r["step_ms"] for r in shown]
    errors = [
        [r["step_ms"] - r["step_ms_iqr"][0] for r in shown],
        [r["step_ms_iqr"][1] - r["step_ms"] for r in shown],
    ]
    decode_axis.barh(positions, steps, xerr=errors, color="tab:blue", capsize=2)
    decode_axis.set_xlabel("decode step, ms per token (median and IQR over bursts)")
    prefill_axis.barh(positions, [r["prefill_ms"] for r in shown], color="tab:orange")
    prefill_axis.set_xlabel(f"prefill of {prefill} tokens, ms")
    prefill_axis.set_xscale("log")
    decode_axis.set_yticks(list(positions), labels)
    decode_axis.invert_yaxis()
    for axis in (decode_axis, prefill_axis):
        axis.grid(True, axis="x", alpha=0.3)
    figure.suptitle("The sample LM on each runtime (* probe rows)")
    figure.tight_layout()
    save_figure(figure, path)


def size_line(onnx_bytes: int, wasm: Sequence[dict]) -> str:
    """The model's size beside the wasm binary's (``wasm``: the files the page fetched)."""
    line = f"model `.onnx` {onnx_bytes / MIB:.2f} MiB"
    for item in wasm:
        line += (
            f"; onnxruntime-web's `{item['url'].rsplit('/', 1)[-1]}` {item['bytes'] / MIB:.2f} MiB"
        )
    return line
