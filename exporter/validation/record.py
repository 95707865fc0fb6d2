"""One check of one backend on one case: its outputs against PyTorch's, into the report."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..quant_budget import ParityBudget, check_budget
from .compare import compare, tolerance
from .report import Check, ValidationReport
from .runners import raised, to_numpy


def record(
    report: ValidationReport,
    backend: str,
    case: str,
    names: tuple[str, ...],
    outputs: Callable[[], list[np.ndarray]],
    expected: tuple[torch.Tensor, ...],
    atol: float | None,
    rtol: float | None,
    budget: ParityBudget | None = None,
) -> None:
    """Check each of ``outputs()`` against PyTorch's ``expected``, one :class:`Check` per name.

    An export that raises instead of running fails every output of the case, with the error.
    """
    try:
        got = outputs()
    except Exception as error:
        note = f"({raised(error)})"
        report.checks += [Check(backend, case, n, math.inf, math.inf, False, note) for n in names]
        return
    for name, g, w in zip(names, got, expected, strict=True):
        if budget is not None and np.issubdtype(np.asarray(g).dtype, np.floating):
            held = check_budget(np.asarray(g), to_numpy(w), name, budget)
            report.checks.append(
                Check(backend, case, name, held.max_abs, held.max_rel, held.passed, held.note,
                      held.metrics)
            )  # fmt: skip
            continue
        dtype = str(w.dtype).removeprefix("torch.")
        a, r = tolerance(dtype, atol, rtol)
        exact = not w.dtype.is_floating_point
        report.tolerances.setdefault(dtype, None if exact else (a, r))
        max_abs, max_rel, passed, note = compare(np.asarray(g), to_numpy(w), a, r)
        report.checks.append(Check(backend, case, name, max_abs, max_rel, passed, note))
