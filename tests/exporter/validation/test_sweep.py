"""The validation sweep with fake runners: plain functions whose right answers are known."""

import math

import numpy as np
import torch

from favor.exporter.quant_budget import ParityBudget
from favor.exporter.specs import ModelSpec, StateSpec, TensorSpec
from favor.exporter.validation.runners import Runner
from favor.exporter.validation.sweep import case_names, validate

# x (batch, seq) float32 -> (2 x, sum of x over seq): "double" (batch, seq), "total" (batch,).
SPEC = ModelSpec(
    "module",
    (TensorSpec("x", ("batch", "seq"), "float32"),),
    ("double", "total"),
    {"batch": 2, "seq": 4},
    ({"batch": 1, "seq": 2}, {"batch": 2, "seq": 4}, {"batch": 3, "seq": 8}),
)
CASES = ["batch=1 seq=2", "batch=2 seq=4", "batch=3 seq=8"]  # 2, 8 and 24 tokens


def expected(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    (x,) = inputs
    return x * 2, x.sum(-1)


def doubles(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    x = inputs[0].numpy()
    return [x * 2, x.sum(-1)]


def _rows(report) -> dict[tuple[str, str], dict]:
    return {(r["backend"], r["output"]): r for r in report.rows()}


def test_a_matching_runner_passes_every_case():
    said: list[str] = []
    report = validate(SPEC, expected, [Runner("numpy", doubles)], progress=said.append)
    assert report.passed, report.table()
    assert said == CASES
    assert [(c.case, c.output) for c in report.checks] == [
        (case, output) for case in CASES for output in ("double", "total")
    ]
    assert report.tolerances == {"float32": (1e-4, 1e-4)}


def test_a_runner_off_at_one_case_fails_there():
    def off_at_batch_2(inputs):
        double, total = doubles(inputs)
        return [double + (1e-3 if len(double) == 2 else 0.0), total]

    rows = _rows(validate(SPEC, expected, [Runner("off", off_at_batch_2)]))
    assert rows[("off", "total")]["passed"]
    double = rows[("off", "double")]
    assert not double["passed"] and double["worst_case"] == "batch=2 seq=4"
    assert math.isclose(double["max_abs"], 1e-3, rel_tol=1e-3)
    # The same miss passes under a tolerance above it.
    assert validate(SPEC, expected, [Runner("off", off_at_batch_2)], atol=2e-3).passed


def test_a_runner_that_raises_fails_every_output_with_the_error():
    def raising(_inputs):
        raise ValueError("no kernel for this")

    report = validate(SPEC, expected, [Runner("broken", raising)])
    assert not report.passed
    assert [(r["output"], r["cases"], r["note"]) for r in report.rows()] == [
        ("double", 3, "(raised ValueError: no kernel for this)"),
        ("total", 3, "(raised ValueError: no kernel for this)"),
    ]
    assert all(math.isinf(r["max_abs"]) for r in report.rows())


def test_a_runner_limited_in_tokens_skips_the_larger_cases():
    seen: list[tuple[int, ...]] = []

    def counting(inputs):
        seen.append(tuple(inputs[0].shape))
        return doubles(inputs)

    report = validate(SPEC, expected, [Runner("slow", counting, max_tokens=8)])
    assert seen == [(1, 2), (2, 4)]
    assert {r["cases"] for r in report.rows()} == {2}
    assert report.passed


def _scaled(factor: float):
    def run(inputs):
        return [y * factor for y in doubles(inputs)]

    return run


def test_a_budgeted_runner_is_held_to_its_budget_not_to_atol():
    budget = ParityBudget(rel_rms=0.05, kl=0.01, top1=0.99, top1_margin=0.5)
    runners = [
        Runner("int8 1% off", _scaled(1.01), budget=budget),
        Runner("int8 20% off", _scaled(1.2), budget=budget),
        Runner("float 1% off", _scaled(1.01)),
    ]
    report = validate(SPEC, expected, runners)
    rows = _rows(report)
    assert report.budget == budget
    for output in ("double", "total"):
        assert rows[("int8 1% off", output)]["passed"]
        assert math.isclose(rows[("int8 1% off", output)]["rel_rms"], 0.01, rel_tol=1e-3)
        assert not rows[("int8 20% off", output)]["passed"]
        assert not rows[("float 1% off", output)]["passed"]
    assert "rel_rms 0.2 > 0.05" in rows[("int8 20% off", "double")]["note"]


def test_rows_list_elementwise_then_budgeted_then_token_limited_runners():
    budget = ParityBudget(rel_rms=0.05, kl=0.01, top1=0.99, top1_margin=0.5)
    runners = [
        Runner("slow", doubles, max_tokens=100),
        Runner("int8", doubles, budget=budget),
        Runner("float", doubles),
    ]
    backends = [r["backend"] for r in validate(SPEC, expected, runners).rows()]
    assert backends == ["float", "float", "int8", "int8", "slow", "slow"]


def test_case_names_tell_equal_sizes_apart_by_seed():
    sweep = ({"batch": 1}, {"batch": 2}, {"batch": 1}, {})
    assert case_names(sweep) == ["batch=1 seed=1", "batch=2", "batch=1 seed=3", "fixed"]


# A causal "LM" whose state is a running sum: tokens (batch, seq) int64 and state (batch,)
# -> sums (batch, seq), the state plus the tokens so far, and new_state (batch,), the last sum.
CAUSAL = ModelSpec(
    "causal-lm",
    (
        TensorSpec("tokens", ("batch", "seq"), "int64", low=0, high=10),
        TensorSpec("state", ("batch",), "int64", sampler="zeros"),
    ),
    ("sums", "new_state"),
    {"batch": 2, "seq": 4},
    ({"batch": 2, "seq": 3},),
    states=(StateSpec("state", "new_state"),),
    chunk_size=4,
)


def running_sums(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    tokens, state = inputs
    sums = state[:, None] + tokens.cumsum(1)
    return sums, sums[:, -1]


def _numpy_running_sums(carry_state: bool):
    def run(inputs):
        tokens, state = (t.numpy() for t in inputs)
        start = state if carry_state else np.zeros_like(state)
        sums = start[:, None] + np.cumsum(tokens, axis=1)
        return [sums, sums[:, -1]]

    return run


def test_decode_carries_the_state_from_call_to_call():
    runners = [
        Runner("carries", _numpy_running_sums(carry_state=True), decode=True),
        Runner("forgets", _numpy_running_sums(carry_state=False), decode=True),
        Runner("no decode", _numpy_running_sums(carry_state=True)),
    ]
    rows = _rows(validate(CAUSAL, running_sums, runners))
    # Chunk 4: a 9-token sequence, prefilled with 3 tokens, then decoded one token per call.
    decoded = rows[("carries (decode)", "sums")]
    assert decoded["passed"] and decoded["worst_case"] == "batch=2 prefill=3 then 6 decode steps"
    # The sweep starts every case from a zero state: there a runner that drops it still passes.
    assert rows[("forgets", "sums")]["passed"]
    assert not rows[("forgets (decode)", "sums")]["passed"]
    assert not any(backend == "no decode (decode)" for backend, _ in rows)


def test_decode_is_for_causal_lms_only():
    runner = Runner("numpy", doubles, decode=True)
    assert [r["backend"] for r in validate(SPEC, expected, [runner]).rows()] == ["numpy", "numpy"]
