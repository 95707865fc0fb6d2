"""Hard validation: PyTorch against ONNX Runtime, TorchScript and ONNX's reference evaluator.

Every check runs the same inputs through PyTorch eager and through one backend, over the spec's
sweep of batch sizes and sequence lengths. For causal LMs a further check decodes token by token
through the stateful graph, feeding each call's state outputs back in, and compares with one
full-sequence PyTorch pass. Any miss fails the export: so does a NaN or inf in any output,
PyTorch's included, and an exported file that raises instead of running.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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
from .quant_budget import ParityBudget, check_budget, first_nonfinite
from .specs import ModelSpec
from .torchscript import call_archive

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
    max_abs = float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0))
    scale = float(np.abs(want64[np.isfinite(want64)]).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else max_abs
    nonfinite = first_nonfinite(got64, want64)
    if nonfinite:
        return max_abs, max_rel, False, f"({nonfinite})"
    return max_abs, max_rel, bool(np.allclose(got64, want64, rtol=rtol, atol=atol)), ""


def _tolerance(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default_atol, default_rtol = TOLERANCES.get(str(dtype).removeprefix("torch."), (0.0, 0.0))
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _case_names(sweep: tuple[dict[str, int], ...]) -> list[str]:
    """One name per case, drawn with seed 1, 2, ...: the seed tells equal sizes apart."""
    names = [" ".join(f"{k}={v}" for k, v in sizes.items()) or "fixed" for sizes in sweep]
    return [
        f"{name} seed={seed}" if names.count(name) > 1 else name
        for seed, name in enumerate(names, start=1)
    ]


# Where in its C++ sources onnxruntime raised, e.g. "/onnxruntime_src/.../reshape_helper.h:91
# onnxruntime::ReshapeHelper::ReshapeHelper(const TensorShape&, ...) ": no help to the user.
_SOURCE_LOCATION = re.compile(r"\S+\.(?:h|cc|cpp):\d+ [\w:~<>]+\([^)]*\)\s*")


def _raised(error: Exception) -> str:
    # The last line carries the cause: TorchScript puts its interpreter traceback first.
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    cause = _SOURCE_LOCATION.sub("", lines[-1].strip()).removeprefix(f"{type(error).__name__}: ")
    return f"raised {type(error).__name__}: {cause[:300]}"


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
    # Fatal only: an error running the graph raises, and the report carries it.
    options.log_severity_level = 4
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


def _or_raising(load: Callable[[], Runner]) -> Runner:
    """``load()``; if loading the exported file raises, a runner that raises the same error.

    A file that does not load then fails every case, as one that does not run does. A missing
    kernel stays an error of the environment (see :func:`_ort_session`).
    """
    try:
        return load()
    except MissingKernelError:
        raise
    except Exception as error:
        return _raising(error)


def _raising(error: Exception) -> Runner:
    def raise_it(_inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        raise error

    return raise_it


def _backends(
    onnx_path: Path | None, torchscript_path: Path | None, spec: ModelSpec
) -> dict[str, Runner]:
    runners = _ort_runners(onnx_path, spec) if onnx_path is not None else {}
    if torchscript_path is not None:
        runners["torchscript"] = _or_raising(lambda: _torchscript_runner(torchscript_path, spec))
    return runners


def _torchscript_runner(path: Path, spec: ModelSpec) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu")

    def run_torchscript(x: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = call_archive(scripted, spec, x)
        return [_numpy(t) for t in out]

    return run_torchscript


def _ort_runners(onnx_path: Path, spec: ModelSpec, suffix: str = "") -> dict[str, Runner]:
    """One runner per onnxruntime provider, labelled ``onnxruntime-cpu`` etc. plus ``suffix``."""
    runners: dict[str, Runner] = {}
    for provider in onnxruntime_providers():
        label = "onnxruntime-" + provider.removesuffix("ExecutionProvider").lower() + suffix
        runners[label] = _or_raising(lambda p=provider: _ort_runner(onnx_path, p, spec))
    return runners


def _ort_runner(onnx_path: Path, provider: str, spec: ModelSpec) -> Runner:
    session = _ort_session(onnx_path, provider)
    names = [t.name for t in spec.inputs]
    return lambda x: session.run(None, {n: _numpy(t) for n, t in zip(names, x, strict=True)})


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
    reference = (
        _or_raising(lambda: _reference_runner(onnx_path, spec)) if onnx_path is not None else None
    )
    cases = zip(spec.sweep, _case_names(spec.sweep), strict=True)
    for seed, (sizes, case) in enumerate(cases, start=1):
        inputs = spec.sample(sizes, seed=seed)
        expected = expect(inputs)
        say(case)
        runners = dict(backends)
        if reference is not None and math.prod(sizes.values()) <= REFERENCE_MAX_TOKENS:
            runners["onnx-reference"] = reference
        for backend, run in runners.items():
            _record(
                report, backend, case, spec.output_names, partial(run, inputs), expected,
                atol, rtol, budget=budget if backend in quantized else None,
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


def _record(
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
        note = f"({_raised(error)})"
        report.checks += [Check(backend, case, n, math.inf, math.inf, False, note) for n in names]
        return
    for name, g, w in zip(names, got, expected, strict=True):
        if budget is not None and np.issubdtype(np.asarray(g).dtype, np.floating):
            held = check_budget(np.asarray(g), _numpy(w), name, budget)
            report.checks.append(
                Check(backend, case, name, held.max_abs, held.max_rel, held.passed, held.note,
                      held.metrics)
            )  # fmt: skip
            continue
        a, r = _tolerance(w.dtype, atol, rtol)
        exact = not w.dtype.is_floating_point
        report.tolerances.setdefault(str(w.dtype).removeprefix("torch."), None if exact else (a, r))
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

    def decode() -> list[np.ndarray]:
        logits, carried = [], state
        for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
            outputs = run((tokens[:, start:stop], *carried))
            logits.append(outputs[0])
            carried = [torch.from_numpy(np.asarray(outputs[i])) for i in order]
        return [np.concatenate(logits, 1)]

    case = f"batch=2 prefill={prefill} then {tokens.shape[1] - prefill} decode steps"
    _record(
        report, f"{backend} (decode)", case, spec.output_names[:1], decode, (expected,),
        atol, rtol, budget,
    )  # fmt: skip
