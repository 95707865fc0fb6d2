"""The case harness: retry policy on scripted attempts, the child-process protocol, memory."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.harness import CaseRunner, Timing, measure_call, spawn_case

QUIET, BUSY = 0.1, 0.9


def runner_with(attempts: list[dict], *, retries: int = 1) -> tuple[CaseRunner, list[dict]]:
    """A runner whose cases return ``attempts`` in turn, without processes or waiting."""
    args = argparse.Namespace(
        max_other_load=0.25, quiet_wait=0.0, retries=retries, case_timeout=10.0, max_minutes=5.0
    )
    runner = CaseRunner("benchmarks.attention", args)
    spawned: list[dict] = []

    def spawn(spec: dict) -> dict:
        spawned.append(spec)
        return attempts[len(spawned) - 1]

    runner.spawn = spawn
    runner.wait_until_quiet = lambda patience_s: 0.0
    return runner, spawned


def attempt(load: float, ms: float = 10.0, runs: int = 5) -> dict:
    return {"median_ms": ms, "runs": runs, "other_load": load}


def test_a_quiet_case_runs_once():
    runner, spawned = runner_with([attempt(QUIET)])
    assert runner.measure({}) == attempt(QUIET)
    assert len(spawned) == 1


def test_a_disturbed_case_runs_again_and_the_quieter_attempt_is_kept():
    runner, spawned = runner_with([attempt(BUSY, ms=30.0), attempt(QUIET)])
    assert runner.measure({}) == attempt(QUIET)
    assert len(spawned) == 2


def test_a_disturbed_long_case_is_not_retried():
    long = attempt(BUSY, ms=6000.0, runs=2)  # 12 s of measured calls
    runner, spawned = runner_with([long, attempt(QUIET)])
    assert runner.measure({}) == long
    assert len(spawned) == 1


def test_a_crash_on_retry_keeps_the_first_attempt():
    runner, _ = runner_with([attempt(BUSY), {"error": "failed (rc=-9)"}])
    assert runner.measure({}) == attempt(BUSY)


def test_a_later_attempt_replaces_a_disturbed_result_only_when_quieter():
    result = {**attempt(BUSY), "n": 512, "method": "favor"}
    runner, _ = runner_with([attempt(QUIET)], retries=0)
    assert runner.remeasure(result, {}) == {**attempt(QUIET), "n": 512, "method": "favor"}
    runner, _ = runner_with([attempt(BUSY + 0.1)], retries=0)
    assert runner.remeasure(result, {}) is None
    runner, spawned = runner_with([], retries=0)
    assert runner.remeasure({**attempt(QUIET), "n": 512}, {}) is None and not spawned


def test_a_failing_case_process_becomes_an_error_entry():
    result = spawn_case("benchmarks.no_such_module", {}, timeout_s=60)
    assert result["error"].startswith("failed (rc=1)")


def test_a_case_process_answers_with_its_measurement():
    timing = {"budget_s": 0.0, "min_runs": 2, "max_case_s": 10.0}
    result = spawn_case(
        "benchmarks.attention", {"kind": "matmul", "size": 8, "timing": timing}, 120
    )
    assert result["runs"] == 2
    # An 8 x 8 by 8 x 8 product is 8³ multiply-adds.
    assert result["gflops"] == pytest.approx(2 * 8**3 / (result["median_ms"] / 1e3) / 1e9)


def test_the_peak_is_the_calls_own_memory():
    mib = 64
    result = measure_call(
        lambda: torch.ones(mib * 2**20 // 4), Timing(budget_s=0.0, min_runs=2, max_case_s=60.0)
    )
    assert result["runs"] == 2 and result["other_load"] >= 0
    if not result["hwm_reset"]:
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    # Each call's 64 MiB tensor is freed before the next, and the inputs are not counted.
    assert mib * 0.9 <= result["peak_mib"] <= 3 * mib
