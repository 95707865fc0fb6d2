"""The attention benchmark's report: table, header, JSON records and the latency/memory plot.

A result is one case's record: ``n``, ``method`` and ``flops``, then either the measurement
(``median_ms``, ``runs``, ``peak_mib``, ``hwm_reset``, ``other_load``, ...) or the ``skipped`` /
``error`` text of a case that did not run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.attention_methods import METHODS, Config
from benchmarks.machine import machine_info
from benchmarks.report import log_axes, markdown_table, pyplot, save_figure

TABLE_HEADER = (
    "n",
    "method",
    "ms",
    "runs",
    "peak MiB",
    "GFLOP/s",
    "% of matmul",
    "speedup vs SDPA",
    "other load",
)
TABLE_ALIGN = "rlrrrrrrr"


def speedup(result: dict, by_key: dict[tuple[int, str], dict]) -> str:
    """Baseline SDPA time over this method's time, for the rows that have a baseline.

    GPU rows race SDPA on the same device; CPU SDPA would flatter them.
    """
    baseline_name = METHODS[result["method"]].baseline
    if baseline_name is None or "median_ms" not in result:
        return ""
    baseline = by_key.get((result["n"], baseline_name), {})
    if "median_ms" not in baseline:
        return ""
    return f"{baseline['median_ms'] / result['median_ms']:.2f}x"


def efficiency(result: dict, matmul: dict) -> tuple[float, float | None]:
    """Achieved GFLOP/s of a measured case, and its percentage of the CPU matmul reference.

    The percentage is None for GPU cases: a CPU SGEMM rate is no yardstick for them.
    """
    gflops = result["flops"] / (result["median_ms"] / 1e3) / 1e9
    if METHODS[result["method"]].device != "cpu":
        return gflops, None
    return gflops, 100 * gflops / matmul["gflops"]


def format_mib(result: dict) -> str:
    """A case's peak memory for a table cell; ``n/a`` where it could not be measured."""
    return "n/a" if result["peak_mib"] is None else f"{result['peak_mib']:.1f}"


def describe(result: dict) -> str:
    """One progress line's worth of a finished case."""
    if "skipped" in result:
        return result["skipped"]
    if "error" in result:
        return result["error"]
    timing = f"{result['median_ms']:.1f} ms (median of {result['runs']})"
    return f"{timing}, {format_mib(result)} MiB, other load {result['other_load']:.2f}"


def table_row(result: dict, by_key: dict, matmul: dict, max_other_load: float) -> list[str]:
    """One case's cells under :data:`TABLE_HEADER`; a case that did not run says why."""
    head = [str(result["n"]), METHODS[result["method"]].label]
    if "median_ms" not in result:
        status = result.get("skipped") or result.get("error")
        return [*head, status, *[""] * (len(TABLE_HEADER) - 3)]
    gflops, percent = efficiency(result, matmul)
    memory_mark = "" if result["hwm_reset"] else "*"
    load_mark = " †" if result["other_load"] > max_other_load else ""
    return [
        *head,
        f"{result['median_ms']:.1f}{load_mark}",
        str(result["runs"]),
        f"{format_mib(result)}{memory_mark}",
        f"{gflops:.1f}",
        "" if percent is None else f"{percent:.1f}",
        speedup(result, by_key),
        f"{result['other_load']:.2f}",
    ]


def render_table(matmul: dict, results: list[dict], max_other_load: float) -> str:
    """The results as a markdown table, one row per case, skipped cases included."""
    by_key = {(r["n"], r["method"]): r for r in results}
    rows = [table_row(r, by_key, matmul, max_other_load) for r in results]
    lines = [
        markdown_table(TABLE_HEADER, rows, TABLE_ALIGN),
        "",
        "other load: cores other processes used while the case ran (this machine is shared); "
        f"† marks more than {max_other_load:g}, so that time is likely inflated.",
    ]
    if any(not r.get("hwm_reset", True) for r in results):
        lines.append("\\* RSS high-water mark could not be reset: the figure may include setup.")
    return "\n".join(lines)


def render_header(args: argparse.Namespace, cfg: Config, matmul: dict, elapsed_s: float) -> str:
    """Machine, software and configuration facts that the table's numbers depend on."""
    machine = machine_info()
    size = args.matmul_size
    return "\n".join(
        [
            "# Attention benchmark: FAVOR+ vs SDPA (CPU, fp32)",
            "",
            f"- date: {machine['date']}",
            f"- CPU: {machine['cpu']}, {machine['cores']} logical cores, "
            f"{matmul['threads']} torch threads",
            f"- torch {machine['torch']}",
            f"- matmul reference: {matmul['gflops']:.1f} GFLOP/s "
            f"(fp32 {size}x{size} @ {size}x{size}, median of {matmul['runs']}, other load "
            f"{matmul['other_load']:.2f} cores; the faster of "
            f"{matmul['gflops_first_last'][0]:.1f} before and "
            f"{matmul['gflops_first_last'][1]:.1f} after the sweep)",
            f"- B={cfg.batch}, H={cfg.heads}, D=Dv={cfg.dim_head}, M={cfg.features} features "
            f"(posrf, orf), chunk C={cfg.chunk_size}",
            f"- timing: median after one warm-up, >= {args.min_runs} runs and >= {args.budget} s "
            f"(fewer runs when one call is slow); peak MiB is RSS above the inputs, per fresh "
            "process",
            "- ORT rows: the graphs favor.exporter writes (`favor-export`, and "
            "`--fused-attention` for the fused rows), batch and length dynamic",
            "- FLOPs (matrix products only, formulas in `benchmarks/attention.py`): "
            "favor 4nMD + 4nM(Dv+1); favor causal adds 2nCM + 2nC(Dv+1); cumsum as favor; "
            "sdpa 4n²D, sdpa causal 2n²D; all times B·H",
            "- speedup vs SDPA: SDPA time with the same causality (and device) / this "
            "method's time",
            f"- CUDA: {machine['cuda_device'] or 'no CUDA device (GPU rows not run)'}",
            f"- sweep wall time: {elapsed_s / 60:.1f} min",
        ]
    )


def plot(results: list[dict], path: Path, max_other_load: float) -> None:
    """Latency and peak memory against n, log-log, one line per method.

    Latency points taken while other processes used more than ``max_other_load`` cores are
    drawn hollow, like the table's † rows.
    """
    plt = pyplot()
    figure, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, method in METHODS.items():
        done = [r for r in results if r["method"] == name and "median_ms" in r]
        if not done:
            continue
        style = "--" if method.device != "cpu" else "-"
        (line,) = latency.plot(
            [r["n"] for r in done], [r["median_ms"] for r in done], style, label=method.label
        )
        for r in done:
            disturbed = r["other_load"] > max_other_load
            face = "white" if disturbed else line.get_color()
            latency.plot(r["n"], r["median_ms"], "o", color=line.get_color(), markerfacecolor=face)
        # Tiny cases can measure 0 MiB above baseline, which a log axis cannot show.
        sized = [r for r in done if (r["peak_mib"] or 0) > 0]
        memory.plot(
            [r["n"] for r in sized], [r["peak_mib"] for r in sized], "o" + style, label=method.label
        )
    for axis, title, unit in (
        (latency, "latency (hollow: other processes were busy)", "ms per call (median)"),
        (memory, "peak working memory", "MiB above inputs"),
    ):
        log_axes(axis, xlabel="sequence length n", ylabel=unit, title=title)
        axis.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def json_report(cfg: Config, matmul: dict, results: list[dict]) -> dict:
    """Machine-readable results: one record per case, with its GFLOP/s and % of matmul.

    Skipped and failed cases keep their ``skipped`` / ``error`` text and have no timing, so
    readers (``benchmarks.targets``) can tell "not run" from a measurement.
    """
    records = []
    for result in results:
        method = METHODS[result["method"]]
        record = {key: value for key, value in result.items() if key != "spec"}
        record.update(label=method.label, causal=method.causal)
        if "median_ms" in result:
            record["gflops"], record["pct_of_matmul"] = efficiency(result, matmul)
        records.append(record)
    return {
        "machine": machine_info(),
        "config": vars(cfg),
        "matmul": {key: matmul[key] for key in ("gflops", "gflops_first_last", "runs")},
        "results": records,
    }
