"""The validation sweep: every runner against PyTorch over the spec's cases."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from favor.runtime.contract import ModelKind

from ..specs import ModelSpec
from .decode import check_decode
from .record import record
from .report import ValidationReport
from .runners import Expected, Runner


def validate(
    spec: ModelSpec,
    expected: Expected,
    runners: Sequence[Runner],
    *,
    atol: float | None = None,
    rtol: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Run every case of ``spec.sweep`` through every runner; return the report (never raises).

    Args:
        spec: inputs to draw (case ``i`` with seed ``i``), output names, and the sweep.
        expected: PyTorch's outputs for the same inputs, in the spec's output order.
        runners: the backends under test (:class:`.runners.Runner`), e.g. from
            :meth:`favor.exporter.formats.Format.runners`.
        atol, rtol: elementwise tolerances for every float output; None takes
            :data:`.compare.TOLERANCES` for the output's dtype. Runners with a ``budget`` are held
            to it instead.
        progress: called with each case's name as it starts.

    Returns:
        The report; ``report.passed`` is False if any check failed or none ran. The table lists
        elementwise checks first, then budgeted ones, then the backends limited to small cases.
    """
    say = progress or (lambda _msg: None)
    ordered = sorted(runners, key=lambda r: (r.max_tokens is not None, r.budget is not None))
    budgets = [r.budget for r in ordered if r.budget is not None]
    report = ValidationReport(atol, rtol, budget=budgets[0] if budgets else None)
    cases = zip(spec.sweep, case_names(spec.sweep), strict=True)
    for seed, (sizes, case) in enumerate(cases, start=1):
        inputs = spec.sample(sizes, seed=seed)
        want = expected(inputs)
        say(case)
        for runner in ordered:
            if runner.takes(sizes):
                record(
                    report, runner.label, case, spec.output_names, partial(runner.run, inputs),
                    want, atol, rtol, budget=runner.budget,
                )  # fmt: skip
    if spec.kind is ModelKind.CAUSAL_LM:
        for runner in ordered:
            if runner.decode:
                say(f"{runner.label}: prefill, then decode token by token")
                check_decode(report, runner, expected, spec, atol, rtol)
    return report


def case_names(sweep: tuple[dict[str, int], ...]) -> list[str]:
    """One name per case, drawn with seed 1, 2, ...: the seed tells equal sizes apart."""
    names = [" ".join(f"{k}={v}" for k, v in sizes.items()) or "fixed" for sizes in sweep]
    return [
        f"{name} seed={seed}" if names.count(name) > 1 else name
        for seed, name in enumerate(names, start=1)
    ]
