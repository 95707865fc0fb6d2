"""The one timing loop of the benchmarks, and the medians built on it."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping


def call_times(
    fn: Callable[[], object],
    *,
    min_runs: int,
    budget_s: float = 0.0,
    warmup: int = 1,
    max_total_s: float = math.inf,
) -> list[float]:
    """Seconds taken by each timed call of ``fn()``.

    ``warmup`` untimed calls come first; then at least ``min_runs`` calls, and more until
    ``budget_s`` seconds of calls have passed. Where the last warm-up call shows that
    ``min_runs`` calls would take longer than ``max_total_s``, only as many calls as fit are
    made (at least one) and the budget is ignored: a slow case would otherwise spend minutes on
    its minimum, and a few runs of a multi-second call are still far above timer noise.
    """
    needed, slow = min_runs, False
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        warm = time.perf_counter() - start
    if warmup and warm * min_runs > max_total_s:
        needed, slow = max(1, int(max_total_s // warm)), True
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < needed or (not slow and time.perf_counter() - began < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup``.

    The median rather than the mean: on a shared machine, outliers are other tenants' work.
    """
    return 1e3 * statistics.median(call_times(fn, min_runs=repeats, warmup=warmup))


def interleaved_median_ms(
    calls: Mapping[Hashable, Callable[[], object]], repeats: int, *, burst: int = 10
) -> dict[Hashable, float]:
    """Median wall time in ms of each call, timed in alternating bursts of ``burst`` calls.

    Ratios between the calls are what a benchmark reports, and a shared machine has slow phases
    lasting seconds: timing the calls one after another would put one call in a slow phase and
    the next in a fast one. Round by round, each phase hits every call alike. Each call runs
    about ``repeats`` times after one warm-up; the result is the median over rounds of each
    burst's median.
    """
    for fn in calls.values():
        fn()
    per_round: dict[Hashable, list[float]] = {key: [] for key in calls}
    for _ in range(max(1, repeats // burst)):
        for key, fn in calls.items():
            per_round[key].append(median_ms(fn, burst, warmup=0))
    return {key: statistics.median(values) for key, values in per_round.items()}
