"""Shared test helpers: inputs in known regimes, error measures, and op-level export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from favor.exporter.formats.onnx import OnnxFormat
from favor.exporter.formats.torchscript import TorchScriptFormat
from favor.exporter.quantize import QuantizationSettings
from favor.exporter.specs import ModelSpec
from favor.exporter.validation import ValidationReport, validate

# ONNX ops no exported graph may hold, from the ONNX operator list rather than the exporter's:
# the ops that draw random numbers (they take a ``seed``) and the control-flow ops (they run a
# subgraph: a branch or a loop body). Dropout takes a seed too but is the identity unless its
# ``training_mode`` input is true, as it never is in inference. A set to intersect a graph's op
# types with.
FORBIDDEN_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "If",
        "Loop",
        "Scan",
        "SequenceMap",
    }
)


def qkv(
    batch: int,
    heads: int,
    length: int,
    dim: int,
    *,
    dim_value: int | None = None,
    scale: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian q, k ``(B, H, N, D)`` scaled by ``scale``, and v ``(B, H, N, Dv)``.

    ``scale=0.5`` keeps ``|q|^2 / sqrt(D)`` near ``D / 4 / sqrt(D)``: the small-norm regime where
    random features estimate the softmax kernel well.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, length, dim)
    q = torch.randn(shape, generator=gen) * scale
    k = torch.randn(shape, generator=gen) * scale
    v = torch.randn((batch, heads, length, dim_value or dim), generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS of the difference over RMS of the expected value."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    exporter: str,
    opset: int = 17,
) -> ort.InferenceSession:
    """Export with torch's ``dynamo`` or ``torchscript`` ONNX exporter; return a CPU session.

    ``dynamic`` maps an input name to ``{axis: symbolic name}``.
    """
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {
                name: torch.export.Dim.DYNAMIC
                for axes in dynamic.values()
                for name in axes.values()
            }
            # Positional, so the input names need not match forward's parameter names.
            shapes = tuple(
                {axis: dims[sym] for axis, sym in dynamic.get(name, {}).items()} or None
                for name in input_names
            )
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=opset,
                input_names=input_names, output_names=output_names,
                dynamic_shapes=shapes, verbose=False, report=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset,
                input_names=input_names, output_names=output_names, dynamic_axes=dynamic,
            )  # fmt: skip
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, **inputs: torch.Tensor) -> list[np.ndarray]:
    return session.run(None, {name: t.detach().numpy() for name, t in inputs.items()})


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, *, ulps: float = 20.0) -> None:
    """Equal up to float32 rounding of sums: tolerance in units of the largest magnitude.

    Signed sums (TrigRF states) cancel, so a purely relative tolerance would demand exactness
    of entries that are rounding noise around zero.
    """
    eps = torch.finfo(torch.float32).eps
    scale = expected.abs().max().item()
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=ulps * eps, atol=ulps * eps * scale
    )


def assert_estimates_close(
    actual: torch.Tensor, expected: torch.Tensor, *, signed: bool, rtol: float, atol: float
) -> None:
    """``assert_close``, except that signed estimates are compared relative to their largest entry.

    A signed estimate (TrigRF, sparse-grid weights) sums terms of both signs into a denominator
    near zero, which amplifies rounding: there the budget is ``10 rtol`` of the largest output.
    """
    if not signed:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
        return
    error = (actual.double() - expected.double()).abs().max().item()
    assert error < 10 * rtol * expected.abs().max().item(), error


def validate_files(
    module: torch.nn.Module,
    spec: ModelSpec,
    files: dict[str, Path],
    *,
    int8: QuantizationSettings | None = None,
) -> ValidationReport:
    """Validate exported ``files`` (role -> path) against ``module``, through the runners their
    formats give, as favor-validate does; ``int8`` marks ``files["onnx"]`` as an int8 graph."""
    formats = []
    if "onnx" in files:
        formats.append(OnnxFormat(None, None, int8=int8))
    if "torchscript" in files:
        formats.append(TorchScriptFormat())

    def expected(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = module(*inputs)
        return out if isinstance(out, tuple) else (out,)

    return validate(spec, expected, [r for f in formats for r in f.runners(files, spec)])
