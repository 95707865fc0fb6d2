"""Hard validation: PyTorch against ONNX Runtime, TorchScript and ONNX's reference evaluator.

Every check runs the same inputs through PyTorch eager and through one backend, over the spec's
sweep of batch sizes and sequence lengths. For causal LMs a further check decodes token by token
through the stateful graph, feeding each call's state outputs back in, and compares with one
full-sequence PyTorch pass. Any miss fails the export.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from torch import nn

from . import linear_attention
from .errors import MissingKernelError
from .precision import upcast
from .quant_budget import ParityBudget, check_budget
from .specs import ModelSpec

# Default tolerances per output dtype: |got - want| <= atol + rtol * |want|, elementwise.
TOLERANCES = {
    "float32": (1e-4, 1e-4),
    "float64": (1e-7, 1e-7),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
# ONNX's reference evaluator is pure Python: only cases this small (batch * seq) run through it.
REFERENCE_MAX_TOKENS = 64


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
        lines = [header, "-" * len(header)]
        if self.reference:
            lines.insert(0, self.reference)
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

    def to_json(self) -> dict:
        def clean(value: float) -> float | str:
            return value if math.isfinite(value) else str(value)

        budget = {} if self.budget is None else {"budget": self.budget.to_json()}
        budget |= {"reference": self.reference} if self.reference else {}
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
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


def compare(
    got: np.ndarray, want: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, bool, str]:
    """``(max_abs, max_rel, passed, note)``; max_rel is relative to the largest ``|want|``."""
    if got.shape != want.shape:
        return math.inf, math.inf, False, f"(shape {got.shape} != {want.shape})"
    if got.dtype.kind in "biu" or want.dtype.kind in "biu":
        exact = bool(np.array_equal(got, want))
        diff = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
        return diff, diff, exact, "" if exact else "(integer mismatch)"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(got64 - want64)
    diff = np.where(np.isnan(got64) & np.isnan(want64), 0.0, diff)
    max_abs = float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0))
    scale = float(np.nan_to_num(np.abs(want64), nan=0.0).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else max_abs
    passed = bool(np.allclose(got64, want64, rtol=rtol, atol=atol, equal_nan=True))
    return max_abs, max_rel, passed, ""


def _tolerance(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default_atol, default_rtol = TOLERANCES.get(str(dtype).removeprefix("torch."), (0.0, 0.0))
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _case_name(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items()) or "fixed"


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()


def onnxruntime_providers() -> list[str]:
    """CPU always; CUDA too where onnxruntime-gpu sees a device."""
    available = ort.get_available_providers()
    return [p for p in ("CPUExecutionProvider", "CUDAExecutionProvider") if p in available]


def _ort_session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread makes the reductions' order, and so the reported errors, reproducible.
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=[provider])
    except OrtNotImplemented as error:
        # e.g. a bfloat16 graph on the CPU provider: name the op, not ONNX Runtime's traceback.
        found = re.search(r"implementation for (\S+) node with name '([^']*)'", str(error))
        what = f"{found[1]} (node {found[2]!r})" if found else str(error).splitlines()[0]
        raise MissingKernelError(
            f"onnxruntime {ort.__version__}'s {provider} has no kernel for {what}"
        ) from None


Runner = Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]


def _backends(
    onnx_path: Path | None, torchscript_path: Path | None, spec: ModelSpec
) -> dict[str, Runner]:
    runners = _ort_runners(onnx_path, spec) if onnx_path is not None else {}
    if torchscript_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(torchscript_path), map_location="cpu")

        def run_torchscript(x: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
            with torch.no_grad():
                out = scripted(*x)
            return [_numpy(t) for t in (out if isinstance(out, tuple) else (out,))]

        runners["torchscript"] = run_torchscript
    return runners


def _ort_runners(onnx_path: Path, spec: ModelSpec, suffix: str = "") -> dict[str, Runner]:
    """One runner per onnxruntime provider, labelled ``onnxruntime-cpu`` etc. plus ``suffix``."""
    names = [t.name for t in spec.inputs]
    runners: dict[str, Runner] = {}
    for provider in onnxruntime_providers():
        session = _ort_session(onnx_path, provider)
        label = "onnxruntime-" + provider.removesuffix("ExecutionProvider").lower() + suffix
        runners[label] = lambda x, s=session: s.run(
            None, {n: _numpy(t) for n, t in zip(names, x, strict=True)}
        )
    return runners


def _reference_runner(onnx_path: Path, spec: ModelSpec) -> Runner:
    from onnx.reference import ReferenceEvaluator

    # A fused graph's contrib LinearAttention runs on ONNX's reference implementation of the
    # standard op, which has the same semantics.
    evaluator = ReferenceEvaluator(str(onnx_path), new_ops=[linear_attention.LinearAttention])
    names = [t.name for t in spec.inputs]
    return lambda x: list(
        evaluator.run(None, {n: _numpy(t) for n, t in zip(names, x, strict=True)})
    )


def validate(
    module: nn.Module,
    spec: ModelSpec,
    *,
    onnx_path: Path | None,
    torchscript_path: Path | None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: Callable[[str], None] | None = None,
    upcast_inputs: bool = False,
    quantized_onnx_path: Path | None = None,
    budget: ParityBudget | None = None,
) -> ValidationReport:
    """Run the sweep through every available backend; return the report (it does not raise).

    ``module`` gives the expected outputs. With ``upcast_inputs`` it receives half inputs as
    float32: a half-precision export is checked against its float32 model (:mod:`.precision`).
    ``quantized_onnx_path`` (an int8 graph) runs through onnxruntime as ``onnxruntime-cpu int8``
    and is held to ``budget`` (:mod:`.quant_budget`) instead of atol/rtol; every other
    backend keeps the elementwise tolerances.
    """
    say = progress or (lambda _msg: None)

    def expect(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = module(*(upcast(inputs) if upcast_inputs else inputs))
        return out if isinstance(out, tuple) else (out,)

    report = ValidationReport(atol, rtol, budget=budget if quantized_onnx_path else None)
    backends = _backends(onnx_path, torchscript_path, spec)
    quantized = _ort_runners(quantized_onnx_path, spec, " int8") if quantized_onnx_path else {}
    backends |= quantized
    reference = _reference_runner(onnx_path, spec) if onnx_path is not None else None
    for index, sizes in enumerate(spec.sweep):
        inputs = spec.sample(sizes, seed=index + 1)
        expected = expect(inputs)
        case = _case_name(sizes)
        say(case)
        runners = dict(backends)
        if reference is not None and math.prod(sizes.values()) <= REFERENCE_MAX_TOKENS:
            runners["onnx-reference"] = reference
        for backend, run in runners.items():
            _record(
                report, backend, case, spec.output_names, run(inputs), expected, atol, rtol,
                budget=budget if backend in quantized else None,
            )  # fmt: skip
    if spec.kind == "causal-lm":
        for backend, run in backends.items():
            if backend.startswith("onnxruntime"):
                say(f"{backend}: prefill, then decode token by token")
                _check_decode(
                    report, backend, run, expect, spec, atol, rtol,
                    budget=budget if backend in quantized else None,
                )  # fmt: skip
    return report


def _record(report, backend, case, names, got, expected, atol, rtol, budget=None) -> None:
    for name, g, w in zip(names, got, expected, strict=True):
        if budget is not None and np.issubdtype(np.asarray(g).dtype, np.floating):
            held = check_budget(np.asarray(g), _numpy(w), name, budget)
            report.checks.append(
                Check(backend, case, name, held.max_abs, held.max_rel, held.passed, held.note,
                      held.metrics)
            )  # fmt: skip
            continue
        a, r = _tolerance(w.dtype, atol, rtol)
        max_abs, max_rel, passed, note = compare(np.asarray(g), _numpy(w), a, r)
        report.checks.append(Check(backend, case, name, max_abs, max_rel, passed, note))


def _check_decode(
    report: ValidationReport,
    backend: str,
    run: Runner,
    expect: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    spec: ModelSpec,
    atol,
    rtol,
    budget: ParityBudget | None = None,
) -> None:
    """Prefill part of a sequence, decode the rest one token per call, compare with one pass."""
    chunk = spec.chunk_size or 8
    sizes = {"batch": 2, "seq": chunk + 5}
    full_inputs = spec.sample(sizes, seed=99)
    expected = expect(full_inputs)[0]
    tokens, state = full_inputs[0], list(full_inputs[1:])
    prefill = chunk // 2 + 1
    state_index = {s.output: spec.output_names.index(s.output) for s in spec.states}
    order = [state_index[s.output] for s in spec.states]
    logits = []
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
        outputs = run((tokens[:, start:stop], *state))
        logits.append(outputs[0])
        state = [torch.from_numpy(np.asarray(outputs[i])) for i in order]
    case = f"batch=2 prefill={prefill} then {tokens.shape[1] - prefill} decode steps"
    _record(
        report,
        f"{backend} (decode)",
        case,
        spec.output_names[:1],
        [np.concatenate(logits, 1)],
        (expected,),
        atol,
        rtol,
        budget,
    )
