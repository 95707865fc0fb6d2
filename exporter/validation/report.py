"""The validation report: every check, summarized per backend and output, as a table, JSON
(the manifest's ``validation`` entry) or JUnit XML."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.etree import ElementTree

from ..quant_budget import ParityBudget


@dataclass
class Check:
    backend: str
    case: str
    output: str
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""
    # Budget figures (rel_rms, kl, top1) of a quantized backend's check; see .quant_budget.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationReport:
    """All checks, and their summary per backend and output."""

    atol: float | None
    rtol: float | None
    checks: list[Check] = field(default_factory=list)
    budget: ParityBudget | None = None  # what quantized backends are held to instead
    # What the outputs were held to when not the exported model itself in PyTorch, e.g. the
    # float32 model for a half-precision export; the table's first line.
    reference: str = ""
    # The elementwise (atol, rtol) applied, by PyTorch output dtype; None where exact (integers).
    tolerances: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def rows(self) -> list[dict]:
        """One row per (backend, output): the worst errors over all cases."""
        grouped: dict[tuple[str, str], list[Check]] = {}
        for check in self.checks:
            grouped.setdefault((check.backend, check.output), []).append(check)
        rows = []
        for (backend, output), checks in grouped.items():
            worst = max(checks, key=lambda c: (not c.passed, c.max_abs))
            rows.append(
                {
                    "backend": backend,
                    "output": output,
                    "cases": len(checks),
                    "max_abs": max(c.max_abs for c in checks),
                    "max_rel": max(c.max_rel for c in checks),
                    "worst_case": worst.case,
                    "passed": all(c.passed for c in checks),
                    "note": worst.note,
                }
                | _worst_metrics(checks)
            )
        return rows

    def table(self) -> str:
        header = (
            f"{'backend':<32} {'output':<20} {'cases':>5} {'max abs':>10} {'max rel':>10}  result"
        )
        lines = [self.reference] if self.reference else []
        lines += [*self.held_to(), header, "-" * len(header)]
        for row in self.rows():
            status = (
                "pass" if row["passed"] else f"FAIL at {row['worst_case']} {row['note']}".rstrip()
            )
            if row["passed"] and "rel_rms" in row:
                status = "pass, within the int8 budget: " + _metrics_text(row)
            lines.append(
                f"{row['backend']:<32} {row['output']:<20} {row['cases']:>5} "
                f"{row['max_abs']:>10.2e} {row['max_rel']:>10.2e}  {status}"
            )
        return "\n".join(lines)

    def held_to(self) -> list[str]:
        """The tolerances, and the int8 budget if any, that the checks applied: one line each."""
        held = [
            f"{dtype} {'exact' if t is None else f'atol {t[0]:g}, rtol {t[1]:g}'}"
            for dtype, t in self.tolerances.items()
        ]
        lines = ["tolerances: |got - want| <= atol + rtol |want|; " + "; ".join(held)]
        if self.budget is not None:
            lines.append("int8 graph held to its budget: " + self.budget.text())
        return lines if held else lines[1:]

    def to_json(self) -> dict:
        def clean(value: float) -> float | str:
            return value if math.isfinite(value) else str(value)

        budget = {} if self.budget is None else {"budget": self.budget.to_json()}
        budget |= {"reference": self.reference} if self.reference else {}
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "tolerances": {
                dtype: "exact" if t is None else {"atol": t[0], "rtol": t[1]}
                for dtype, t in self.tolerances.items()
            },
            "rows": [
                row | {"max_abs": clean(row["max_abs"]), "max_rel": clean(row["max_rel"])}
                for row in self.rows()
            ],
        } | budget

    def junit_xml(self, suite: str = "favor-export parity") -> str:
        rows = self.rows()
        failures = sum(not r["passed"] for r in rows)
        root = ElementTree.Element(
            "testsuite", name=suite, tests=str(len(rows)), failures=str(failures)
        )
        for row in rows:
            case = ElementTree.SubElement(
                root, "testcase", classname=row["backend"], name=row["output"]
            )
            if not row["passed"]:
                failure = ElementTree.SubElement(
                    case, "failure", message=f"max abs {row['max_abs']:.3e} at {row['worst_case']}"
                )
                failure.text = self.table()
        return ElementTree.tostring(root, encoding="unicode")


def _worst_metrics(checks: list[Check]) -> dict[str, float]:
    """The worst budget figures over ``checks``: largest rel_rms and kl, smallest top1."""
    worst: dict[str, float] = {}
    for check in checks:
        for key, value in check.metrics.items():
            pick = min if key == "top1" else max
            worst[key] = pick(worst.get(key, value), value)
    worst.pop("top1_positions", None)
    return worst


def _metrics_text(row: dict) -> str:
    return ", ".join(
        f"top1 {row[k]:.1%}" if k == "top1" else f"{k} {row[k]:.2g}"
        for k in ("rel_rms", "kl", "top1")
        if k in row
    )
