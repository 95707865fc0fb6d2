"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping


def median_ms(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls.

    The median rather than the mean: on a shared machine, outliers are other tenants' work.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
