"""The validation report, from hand-made checks: rows, table, JSON and JUnit XML."""

import json
import math
from xml.etree import ElementTree

import pytest

from favor.exporter.quant_budget import ParityBudget
from favor.exporter.validation.report import Check, ValidationReport

BUDGET = ParityBudget(rel_rms=0.1, kl=0.01, top1=0.99, top1_margin=0.5)


def _report(**fields) -> ValidationReport:
    """Two backends; torchscript fails logits at batch=2 with a smaller error than batch=1's."""
    checks = [
        Check("onnxruntime-cpu", "batch=1", "logits", 1e-6, 2e-6, True),
        Check("onnxruntime-cpu", "batch=1", "offsets", 0.0, 0.0, True),
        Check("onnxruntime-cpu", "batch=2", "logits", 5e-5, 3e-5, True),
        Check("torchscript", "batch=1", "logits", 5e-4, 4e-4, True),
        Check("torchscript", "batch=2", "logits", 2e-4, 1e-4, False, "(worse than allowed)"),
    ]
    return ValidationReport(None, None, checks, **fields)


def _budget_report() -> ValidationReport:
    metrics = [
        {"rel_rms": 0.02, "kl": 4e-4, "top1": 1.0, "top1_positions": 7},
        {"rel_rms": 0.03, "kl": 1e-4, "top1": 0.995, "top1_positions": 9},
    ]
    checks = [
        Check("onnxruntime-cpu int8", f"batch={i}", "logits", 0.1, 0.05, True, "", m)
        for i, m in enumerate(metrics, start=1)
    ]
    return ValidationReport(None, None, checks, budget=BUDGET)


def test_rows_summarize_each_backend_and_output_over_its_cases():
    rows = _report().rows()
    assert [(r["backend"], r["output"], r["cases"]) for r in rows] == [
        ("onnxruntime-cpu", "logits", 2),
        ("onnxruntime-cpu", "offsets", 1),
        ("torchscript", "logits", 2),
    ]
    ort_logits, _, ts_logits = rows
    assert (ort_logits["max_abs"], ort_logits["max_rel"]) == (5e-5, 3e-5)
    assert ort_logits["worst_case"] == "batch=2" and ort_logits["passed"]
    # A failed case is the worst, even where a passing one is further off.
    assert (ts_logits["max_abs"], ts_logits["max_rel"]) == (5e-4, 4e-4)
    assert ts_logits["worst_case"] == "batch=2" and not ts_logits["passed"]
    assert ts_logits["note"] == "(worse than allowed)"


def test_budget_rows_carry_the_worst_figures_over_the_cases():
    (row,) = _budget_report().rows()
    assert (row["rel_rms"], row["kl"], row["top1"]) == (0.03, 4e-4, 0.995)
    assert "top1_positions" not in row


@pytest.mark.parametrize(
    ("passes", "passed"),
    [([], False), ([True], True), ([True, True], True), ([True, False], False)],
    ids=["no-checks", "one-pass", "all-pass", "one-fails"],
)
def test_the_report_passes_only_with_checks_that_all_pass(passes, passed):
    checks = [Check("b", f"case{i}", "y", 0.0, 0.0, p) for i, p in enumerate(passes)]
    assert ValidationReport(None, None, checks).passed is passed


def test_the_table_has_tolerances_header_and_one_line_per_row():
    report = _report(tolerances={"float32": (1e-4, 1e-4), "int64": None})
    lines = report.table().splitlines()
    assert lines[0] == (
        "tolerances: |got - want| <= atol + rtol |want|; float32 atol 0.0001, rtol 0.0001; "
        "int64 exact"
    )
    assert lines[1].split() == ["backend", "output", "cases", "max", "abs", "max", "rel", "result"]
    assert set(lines[2]) == {"-"} and len(lines[2]) == len(lines[1])
    assert [line.split() for line in lines[3:]] == [
        ["onnxruntime-cpu", "logits", "2", "5.00e-05", "3.00e-05", "pass"],
        ["onnxruntime-cpu", "offsets", "1", "0.00e+00", "0.00e+00", "pass"],
        ["torchscript", "logits", "2", "5.00e-04", "4.00e-04", "FAIL", "at", "batch=2", "(worse",
         "than", "allowed)"],
    ]  # fmt: skip


def test_the_table_names_the_reference_first_and_a_failure_without_note_plainly():
    checks = [Check("torchscript", "batch=3", "y", 1.0, 1.0, False)]
    report = ValidationReport(None, None, checks, reference="held to the float32 model")
    lines = report.table().splitlines()
    assert lines[0] == "held to the float32 model"
    assert lines[-1].endswith("  FAIL at batch=3")


def test_the_table_gives_the_budget_and_the_figures_of_a_budgeted_pass():
    lines = _budget_report().table().splitlines()
    assert lines[0] == (
        "int8 graph held to its budget: relative RMS error <= 0.1; for logits mean KL <= 0.01 "
        "nats and top-1 agreement >= 99% where PyTorch's top logit leads by > 0.5"
    )
    assert lines[-1].endswith("  pass, within the int8 budget: rel_rms 0.03, kl 0.0004, top1 99.5%")


def test_held_to_is_empty_with_no_tolerance_and_no_budget():
    assert _report().held_to() == []


def test_json_spells_out_non_finite_errors_and_dumps():
    checks = [
        Check("onnxruntime-cpu", "batch=1", "y", math.inf, math.inf, False, "(raised X: y)"),
        Check("torchscript", "batch=1", "y", math.nan, math.nan, False),
    ]
    report = ValidationReport(1e-3, None, checks, tolerances={"float16": (1e-2, 1e-2)})
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["passed"] is False
    assert (data["atol"], data["rtol"]) == (1e-3, None)
    assert data["tolerances"] == {"float16": {"atol": 1e-2, "rtol": 1e-2}}
    assert [(r["max_abs"], r["max_rel"]) for r in data["rows"]] == [("inf", "inf"), ("nan", "nan")]
    assert "budget" not in data and "reference" not in data


def test_json_records_the_budget_reference_and_exact_integers():
    report = _budget_report()
    report.reference, report.tolerances = "held to the float32 model", {"int64": None}
    data = report.to_json()
    assert data["budget"] == {"rel_rms": 0.1, "kl": 0.01, "top1": 0.99, "top1_margin": 0.5}
    assert data["reference"] == "held to the float32 model"
    assert data["tolerances"] == {"int64": "exact"}
    assert data["passed"] is True


def test_junit_xml_has_one_testcase_per_row_and_the_failures():
    report = _report()
    suite = ElementTree.fromstring(report.junit_xml())
    assert suite.tag == "testsuite"
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == (
        "favor-export parity", "3", "1",
    )  # fmt: skip
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("onnxruntime-cpu", "logits"),
        ("onnxruntime-cpu", "offsets"),
        ("torchscript", "logits"),
    ]
    assert [c.find("failure") is None for c in cases] == [True, True, False]
    failure = cases[2].find("failure")
    assert failure.get("message") == "max abs 5.000e-04 at batch=2"
    assert "FAIL at batch=2 (worse than allowed)" in failure.text
