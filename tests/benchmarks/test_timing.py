"""The timing loop on a fake clock: how many calls it makes, and the figures built on it."""

from __future__ import annotations

import pytest

from benchmarks import timing
from benchmarks.timing import call_times, interleaved_median_ms, median_ms


class FakeClock:
    """``time.perf_counter`` that only moves when a timed call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def costing(clock: FakeClock, *seconds: float):
    """A call taking ``seconds[i]`` on the i-th call (the last value from then on); it counts."""
    calls: list[float] = []

    def call() -> None:
        cost = seconds[min(len(calls), len(seconds) - 1)]
        calls.append(cost)
        clock.now += cost

    return call, calls


@pytest.mark.parametrize(
    ("cost", "min_runs", "budget_s", "max_total_s", "runs"),
    # Binary fractions, so that the fake clock's sums are exact.
    [
        (0.125, 5, 0.0, float("inf"), 5),  # no budget: exactly the minimum
        (0.25, 2, 0.8, float("inf"), 4),  # 0.25, 0.5, 0.75 are under the budget, 1.0 is not
        (0.25, 6, 0.8, float("inf"), 6),  # the minimum outlasts the budget
        (4.0, 3, 100.0, 10.0, 2),  # 3 x 4 s > 10 s: as many as fit, budget ignored
        (16.0, 3, 100.0, 10.0, 1),  # not even one fits: one anyway
    ],
    ids=["minimum", "budget", "minimum-beyond-budget", "slow-capped", "slower-than-cap"],
)
def test_runs_follow_minimum_budget_and_cap(clock, cost, min_runs, budget_s, max_total_s, runs):
    call, calls = costing(clock, cost)
    times = call_times(call, min_runs=min_runs, budget_s=budget_s, max_total_s=max_total_s)
    assert times == [cost] * runs
    assert len(calls) == runs + 1  # one untimed warm-up


def test_without_warm_up_nothing_is_capped(clock):
    call, calls = costing(clock, 5.0)
    assert len(call_times(call, min_runs=3, warmup=0, max_total_s=1.0)) == 3
    assert len(calls) == 3


def test_median_ms_leaves_out_the_warm_up(clock):
    call, _ = costing(clock, 9.0, 0.001, 0.003, 0.002)
    assert median_ms(call, 3) == pytest.approx(2.0)


def test_calls_alternate_in_bursts_and_each_gets_a_figure():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = interleaved_median_ms(calls, repeats=30, burst=10)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    # One warm-up each, then three rounds of ten a's followed by ten b's.
    assert order[:2] == ["a", "b"]
    assert order[2:] == (["a"] * 10 + ["b"] * 10) * 3
