"""The elementwise comparison, on arrays whose verdict is plain by hand."""

import math

import numpy as np
import pytest

from favor.exporter.validation.compare import compare, tolerance
from tests.exporter.validation.nonfinite import NONFINITE


def _f64(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# Differences chosen as powers of two, so max_abs is exact.
WITHIN_AND_OUTSIDE = {
    "exact": (_f64(1.0, -2.0), _f64(1.0, -2.0), 0.0, 0.0, True, 0.0),
    "within-atol": (_f64(1.0, 2.0625), _f64(1.0, 2.0), 0.125, 0.0, True, 0.0625),
    "outside-atol": (_f64(1.0, 2.25), _f64(1.0, 2.0), 0.125, 0.0, False, 0.25),
    # rtol is relative to each element's |want|: 1% of 200 is 2.
    "within-rtol": (_f64(100.5, -200.0), _f64(100.0, -200.0), 0.0, 0.01, True, 0.5),
    "outside-rtol": (_f64(100.0, -203.0), _f64(100.0, -200.0), 0.0, 0.01, False, 3.0),
    "atol-plus-rtol": (_f64(10.25), _f64(10.0), 0.125, 0.0125, True, 0.25),
}  # fmt: skip


@pytest.mark.parametrize(
    ("got", "want", "atol", "rtol", "passed", "max_abs"),
    WITHIN_AND_OUTSIDE.values(),
    ids=WITHIN_AND_OUTSIDE.keys(),
)
def test_float_outputs_pass_within_atol_plus_rtol(got, want, atol, rtol, passed, max_abs):
    assert compare(got, want, atol, rtol)[::2] == (max_abs, passed)
    assert compare(got, want, atol, rtol)[3] == ""


def test_max_rel_is_relative_to_the_largest_finite_want():
    # Elementwise the first entry is off by 100%; against the largest |want| (4) by 12.5%.
    assert compare(_f64(1.0, -4.0), _f64(0.5, -4.0), 1.0, 0.0)[:3] == (0.5, 0.125, True)


def test_max_rel_is_max_abs_where_want_is_all_zero():
    assert compare(_f64(0.0, 0.25), _f64(0.0, 0.0), 0.0, 0.0)[:3] == (0.25, 0.25, False)


def test_a_shape_mismatch_fails_whatever_the_tolerance():
    got, want = np.zeros((2, 3)), np.zeros((3, 2))
    assert compare(got, want, 1e9, 1e9) == (math.inf, math.inf, False, "(shape (2, 3) != (3, 2))")


@pytest.mark.parametrize("got_dtype", [np.int64, np.float32], ids=["int-vs-int", "float-vs-int"])
def test_integers_compare_exactly_whatever_the_tolerance(got_dtype):
    want = np.array([1, 2, 3], dtype=np.int64)
    assert compare(want.astype(got_dtype), want, 1e9, 1e9) == (0.0, 0.0, True, "")
    off_by_three = np.array([1, 5, 3]).astype(got_dtype)
    assert compare(off_by_three, want, 1e9, 1e9) == (3.0, 3.0, False, "(integer mismatch)")


@pytest.mark.parametrize(("got", "want", "where"), NONFINITE.values(), ids=NONFINITE.keys())
def test_nonfinite_values_fail_with_their_index(got, want, where):
    max_abs, _, passed, note = compare(got, want, atol=1e9, rtol=1e9)
    assert not passed
    assert where in note
    assert math.isinf(max_abs)  # never a 0, nor a NaN that sorts as no error


@pytest.mark.parametrize(
    ("dtype", "atol", "rtol", "held_to"),
    [
        ("float32", None, None, (1e-4, 1e-4)),
        ("float64", None, None, (1e-7, 1e-7)),
        ("float16", None, None, (1e-2, 1e-2)),
        ("bfloat16", None, None, (5e-2, 5e-2)),
        ("int64", None, None, (0.0, 0.0)),
        ("float32", 1e-3, None, (1e-3, 1e-4)),
        ("float16", None, 0.5, (1e-2, 0.5)),
        ("float32", 0.0, 0.0, (0.0, 0.0)),
    ],
    ids=["float32", "float64", "float16", "bfloat16", "int64", "atol-given", "rtol-given", "zeros-given"],
)  # fmt: skip
def test_tolerance_defaults_per_dtype_unless_given(dtype, atol, rtol, held_to):
    assert tolerance(dtype, atol, rtol) == held_to
