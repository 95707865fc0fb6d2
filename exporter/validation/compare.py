"""Elementwise comparison of one exported output with PyTorch's, and the default tolerances."""

from __future__ import annotations

import math

import numpy as np

from ..quant_budget import first_nonfinite

# Default tolerances per output dtype: |got - want| <= atol + rtol * |want|, elementwise.
TOLERANCES = {
    "float32": (1e-4, 1e-4),
    "float64": (1e-7, 1e-7),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


def tolerance(dtype: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """``(atol, rtol)`` for an output of ``dtype``: the given ones, else :data:`TOLERANCES`
    (zero for dtypes it lacks, e.g. integers, which compare exactly)."""
    default_atol, default_rtol = TOLERANCES.get(dtype, (0.0, 0.0))
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def compare(
    got: np.ndarray, want: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, bool, str]:
    """``(max_abs, max_rel, passed, note)``; max_rel is relative to the largest finite ``|want|``.

    A NaN or inf on either side fails, even where both sides hold the same one: a model whose
    weights are NaN matches nothing.
    """
    if got.shape != want.shape:
        return math.inf, math.inf, False, f"(shape {got.shape} != {want.shape})"
    if got.dtype.kind in "biu" or want.dtype.kind in "biu":
        exact = bool(np.array_equal(got, want))
        diff = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
        return diff, diff, exact, "" if exact else "(integer mismatch)"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: a NaN difference, reported as inf below
        diff = np.abs(got64 - want64)
    max_abs = float(np.nan_to_num(diff, nan=math.inf, posinf=math.inf).max(initial=0.0))
    scale = float(np.abs(want64[np.isfinite(want64)]).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else max_abs
    nonfinite = first_nonfinite(got64, want64)
    if nonfinite:
        return max_abs, max_rel, False, f"({nonfinite})"
    return max_abs, max_rel, bool(np.allclose(got64, want64, rtol=rtol, atol=atol)), ""
