"""One case of one backend into the report: elementwise or held to a budget, or raised."""

import math

import numpy as np
import pytest
import torch

from favor.exporter.quant_budget import INT8_BUDGET
from favor.exporter.validation.record import record
from favor.exporter.validation.report import ValidationReport
from tests.exporter.validation.nonfinite import NONFINITE

NAMES = ("logits", "offsets")
# Logits with a clear winner per position (margin 1), and integer offsets.
LOGITS = torch.tensor([[4.0, 3.0, 0.0], [0.0, 1.0, 2.0]])
OFFSETS = torch.tensor([3, 5])


def _recorded(got: list[np.ndarray], budget=None, atol=None) -> ValidationReport:
    report = ValidationReport(atol, None)
    record(report, "b", "case", NAMES, lambda: got, (LOGITS, OFFSETS), atol, None, budget)
    return report


def test_elementwise_checks_record_the_tolerance_of_each_dtype():
    report = _recorded([LOGITS.numpy() + 1e-3, OFFSETS.numpy()], atol=1e-2)
    assert [(c.output, c.passed) for c in report.checks] == [("logits", True), ("offsets", True)]
    assert report.tolerances == {"float32": (1e-2, 1e-4), "int64": None}


def test_under_a_budget_float_outputs_get_its_figures_and_integers_stay_exact():
    report = _recorded([LOGITS.numpy() * 1.01, OFFSETS.numpy() + 1], budget=INT8_BUDGET)
    logits, offsets = report.checks
    # 1% off: outside float32's elementwise tolerance, well within the int8 budget.
    assert logits.passed and math.isclose(logits.metrics["rel_rms"], 0.01, rel_tol=1e-4)
    assert logits.metrics["top1"] == 1.0
    assert (offsets.passed, offsets.note, offsets.metrics) == (False, "(integer mismatch)", {})
    assert report.tolerances == {"int64": None}


@pytest.mark.parametrize(("got", "want", "where"), NONFINITE.values(), ids=NONFINITE.keys())
def test_under_a_budget_a_nonfinite_output_fails_with_its_index(got, want, where):
    report = ValidationReport(None, None)
    record(report, "b", "case", ("logits",), lambda: [got], (torch.from_numpy(want),), None, None,
           INT8_BUDGET)  # fmt: skip
    (check,) = report.checks
    assert not check.passed
    assert where in check.note
    assert check.max_abs > 0


def test_an_export_that_raises_fails_every_output_with_the_error():
    def outputs():
        raise RuntimeError("Non-zero status code")

    report = ValidationReport(None, None)
    record(report, "b", "case", NAMES, outputs, (LOGITS, OFFSETS), None, None)
    assert [(c.output, c.passed, c.note) for c in report.checks] == [
        (name, False, "(raised RuntimeError: Non-zero status code)") for name in NAMES
    ]
    assert all(math.isinf(c.max_abs) and math.isinf(c.max_rel) for c in report.checks)
