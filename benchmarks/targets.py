"""The performance targets of issue 6, judged from one run's own benchmark records.

Pure functions from result records to table rows, so that the judging is unit-testable without
running anything. The records are those of ``attention.json`` (``results``: one dict per case with
``n``, ``method`` and, when measured, ``median_ms``, ``peak_mib`` and ``pct_of_matmul``) and of
``decode.json`` (``results``: ``context``, ``favor_ms``, ``softmax_ms``).

Every ratio divides two figures from the same run at the same length: a speedup against numbers
from another day would measure the machine's mood as much as the code. A target whose cases did not
run (a ``--quick`` run, a skipped or failed case) is reported as "not measured", never estimated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from benchmarks.report import markdown_table

MET = "met"
NOT_MET = "not met"
NOT_MEASURED = "not measured"
INFO = "info"  # a figure with no target: reported, not judged

# Method names of benchmarks.attention. The targets are about the exported graph, so the ORT
# methods are the subjects and the eager ones only baselines.
ORT = "favor_ort"
ORT_CAUSAL = "favor_causal_ort"
ORT_CAUSAL_FUSED = "favor_causal_fused_ort"
EAGER = "favor"
EAGER_CAUSAL = "favor_causal"
SDPA_CAUSAL = "sdpa_causal"
SDPA_CAUSAL_CUDA = "sdpa_causal_cuda"
GPU_FAVOR = (
    "favor_causal_cuda",
    "favor_causal_jit_cuda",
    "favor_causal_ort_cuda",
    "favor_causal_fused_ort_cuda",
)

EFFICIENCY_MIN_N = 8192
EFFICIENCY_GOAL_PCT = 60.0
SPEEDUP_GOALS = {4096: 4.5, 16384: 18.0}
ORT_VS_EAGER_GOAL = 1.5
MEMORY_N = 65536
MEMORY_LIMIT_MIB = 1.5 * 1024
# Below this length fixed costs (allocator pools, ORT's arena) dominate the working memory, so
# the growth exponent is fitted above it. Linear growth has exponent 1; 1.1 allows for noise.
MEMORY_SLOPE_MIN_N = 4096
MEMORY_SLOPE_MAX = 1.1
DECODE_SHORT, DECODE_LONG = 16, 8192
DECODE_FLAT_MAX = 1.2
DECODE_VS_SOFTMAX_GOAL = 10.0


@dataclass(frozen=True)
class Row:
    """One line of the targets table: what, the measured figure(s), the goal and the verdict."""

    what: str
    measured: str
    goal: str
    status: str

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def measured(records: Iterable[dict]) -> dict[tuple[int, str], dict]:
    """Measured attention cases by ``(n, method)``; skipped and failed cases are left out."""
    return {(r["n"], r["method"]): r for r in records if "median_ms" in r}


def verdict(ok: bool) -> str:
    """``met`` or ``not met``."""
    return MET if ok else NOT_MET


def efficiency_row(records: Sequence[dict], method: str, what: str) -> Row:
    """Achieved GFLOP/s as % of the same run's SGEMM rate at every measured n >= 8192.

    Met only if every such length reaches the goal: the target is for long sequences in general.
    """
    cases = sorted(
        (n, r["pct_of_matmul"])
        for (n, m), r in measured(records).items()
        if m == method and n >= EFFICIENCY_MIN_N and r.get("pct_of_matmul") is not None
    )
    goal = f"≥ {EFFICIENCY_GOAL_PCT:g}% at n ≥ {EFFICIENCY_MIN_N}"
    if not cases:
        return Row(what, NOT_MEASURED, goal, NOT_MEASURED)
    text = ", ".join(f"{pct:.1f}% (n={n})" for n, pct in cases)
    return Row(what, text, goal, verdict(min(pct for _, pct in cases) >= EFFICIENCY_GOAL_PCT))


def ratio(
    cases: dict[tuple[int, str], dict], n: int, slow: str, fast: str, key: str = "median_ms"
) -> float | None:
    """``slow``'s time over ``fast``'s at the same ``n``; None unless both were measured."""
    if (n, slow) not in cases or (n, fast) not in cases:
        return None
    return cases[(n, slow)][key] / cases[(n, fast)][key]


def speedup_row(records: Sequence[dict], n: int, goal: float) -> Row:
    """Chunked causal FAVOR in ORT against torch's causal SDPA at one length."""
    cases = measured(records)
    what = f"causal FAVOR (ORT) vs torch causal SDPA, n={n}"
    goal_text = f"≥ {goal:g}x faster"
    value = ratio(cases, n, SDPA_CAUSAL, ORT_CAUSAL)
    if value is None:
        return Row(what, NOT_MEASURED, goal_text, NOT_MEASURED)
    times = (
        f"{cases[(n, SDPA_CAUSAL)]['median_ms']:.1f} / {cases[(n, ORT_CAUSAL)]['median_ms']:.1f} ms"
    )
    return Row(what, f"{value:.2f}x ({times})", goal_text, verdict(value >= goal))


def speedups_by_length(records: Sequence[dict], slow: str, fast: str) -> list[tuple[int, float]]:
    """``(n, slow / fast)`` at every length where both methods were measured, by n."""
    cases = measured(records)
    lengths = sorted({n for n, _ in cases})
    pairs = [(n, ratio(cases, n, slow, fast)) for n in lengths]
    return [(n, value) for n, value in pairs if value is not None]


def format_speedups(pairs: Sequence[tuple[int, float]]) -> str:
    """``1.46x (n=1024), 1.58x (n=4096)``."""
    return ", ".join(f"{value:.2f}x (n={n})" for n, value in pairs)


def ort_vs_eager_row(records: Sequence[dict], ort: str, eager: str, what: str) -> Row:
    """The exported graph in ORT against the same module in PyTorch eager, at every length.

    The target names no length, so it must hold at each measured one.
    """
    pairs = speedups_by_length(records, eager, ort)
    goal = f"≥ {ORT_VS_EAGER_GOAL:g}x faster at every n"
    if not pairs:
        return Row(what, NOT_MEASURED, goal, NOT_MEASURED)
    ok = min(value for _, value in pairs) >= ORT_VS_EAGER_GOAL
    return Row(what, format_speedups(pairs), goal, verdict(ok))


def memory_row(records: Sequence[dict]) -> Row:
    """Peak working memory of causal FAVOR in ORT at n = 65536."""
    case = measured(records).get((MEMORY_N, ORT_CAUSAL))
    what = f"peak memory, causal FAVOR (ORT), n={MEMORY_N}"
    goal = f"≤ {MEMORY_LIMIT_MIB / 1024:g} GiB"
    if case is None or case.get("peak_mib") is None:
        return Row(what, NOT_MEASURED, goal, NOT_MEASURED)
    peak = case["peak_mib"]
    return Row(what, f"{peak:.0f} MiB", goal, verdict(peak <= MEMORY_LIMIT_MIB))


def growth_exponent(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of log(y) against log(x): 1 for linear growth, 2 for quadratic."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def memory_growth_row(records: Sequence[dict]) -> Row:
    """Whether causal FAVOR's peak memory in ORT grows linearly in n (log-log slope)."""
    points = sorted(
        (n, r["peak_mib"])
        for (n, m), r in measured(records).items()
        if m == ORT_CAUSAL and n >= MEMORY_SLOPE_MIN_N and (r.get("peak_mib") or 0) > 0
    )
    what = f"peak memory growth, causal FAVOR (ORT), n ≥ {MEMORY_SLOPE_MIN_N}"
    goal = f"linear in n (log-log slope ≤ {MEMORY_SLOPE_MAX:g})"
    if len(points) < 2:
        return Row(what, NOT_MEASURED, goal, NOT_MEASURED)
    slope = growth_exponent(points)
    span = f"n={points[0][0]}…{points[-1][0]}"
    return Row(what, f"slope {slope:.2f} ({span})", goal, verdict(slope <= MEMORY_SLOPE_MAX))


def decode_rows(records: Sequence[dict]) -> list[Row]:
    """Decode latency: flat in context for FAVOR, and far below a softmax LM's with a KV cache."""
    by_context = {r["context"]: r for r in records}
    short, long = by_context.get(DECODE_SHORT), by_context.get(DECODE_LONG)
    flat_what = f"decode step, FAVOR, {DECODE_LONG} vs {DECODE_SHORT}-token context"
    flat_goal = f"within {DECODE_FLAT_MAX:g}x"
    if short is None or long is None:
        flat = Row(flat_what, NOT_MEASURED, flat_goal, NOT_MEASURED)
    else:
        value = long["favor_ms"] / short["favor_ms"]
        text = f"{value:.2f}x ({long['favor_ms']:.2f} / {short['favor_ms']:.2f} ms)"
        flat = Row(flat_what, text, flat_goal, verdict(value <= DECODE_FLAT_MAX))
    versus_what = f"decode step, softmax+KV cache vs FAVOR, {DECODE_LONG} context"
    versus_goal = f"≥ {DECODE_VS_SOFTMAX_GOAL:g}x faster"
    if long is None:
        versus = Row(versus_what, NOT_MEASURED, versus_goal, NOT_MEASURED)
    else:
        value = long["softmax_ms"] / long["favor_ms"]
        text = f"{value:.2f}x ({long['softmax_ms']:.2f} / {long['favor_ms']:.2f} ms)"
        versus = Row(versus_what, text, versus_goal, verdict(value >= DECODE_VS_SOFTMAX_GOAL))
    return [flat, versus]


def info_row(records: Sequence[dict], slow: str, fast: str, what: str) -> Row | None:
    """An unjudged speedup at every length where both ran; None where they never both ran.

    For comparisons without a target: GPU paths here; a fused ORT path against the portable
    graph reads the same way.
    """
    pairs = speedups_by_length(records, slow, fast)
    return Row(what, format_speedups(pairs), "—", INFO) if pairs else None


def attention_rows(records: Sequence[dict]) -> list[Row]:
    """The attention targets, in the issue's order, then unjudged GPU rows where GPUs ran."""
    rows = [
        efficiency_row(records, ORT, "FAVOR (ORT) GFLOP/s vs same-run SGEMM, non-causal"),
        efficiency_row(records, ORT_CAUSAL, "FAVOR (ORT) GFLOP/s vs same-run SGEMM, causal"),
        *(speedup_row(records, n, goal) for n, goal in SPEEDUP_GOALS.items()),
        ort_vs_eager_row(records, ORT, EAGER, "exported graph (ORT) vs PyTorch eager, non-causal"),
        ort_vs_eager_row(
            records, ORT_CAUSAL, EAGER_CAUSAL, "exported graph (ORT) vs PyTorch eager, causal"
        ),
        memory_row(records),
        memory_growth_row(records),
    ]
    fused = info_row(
        records,
        ORT_CAUSAL,
        ORT_CAUSAL_FUSED,
        "fused LinearAttention vs portable causal graph (ORT)",
    )
    if fused is not None:
        rows.append(fused)
    for method in GPU_FAVOR:
        row = info_row(records, SDPA_CAUSAL_CUDA, method, f"{method} vs {SDPA_CAUSAL_CUDA}")
        if row is not None:
            rows.append(row)
    return rows


def evaluate(attention: Sequence[dict] | None, decode: Sequence[dict] | None) -> list[Row]:
    """Every target's row; a benchmark that was not run (None) leaves its rows "not measured"."""
    return [*attention_rows(attention or []), *decode_rows(decode or [])]


def render(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    cells = [[r.what, r.measured, r.goal, r.status] for r in rows]
    return markdown_table(["target", "measured", "goal", "status"], cells)
