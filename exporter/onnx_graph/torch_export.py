"""torch -> ONNX: run torch's exporter, bring the graph to the opset, name its dims.

Either of torch's exporters can be used: ``dynamo`` (torch.export based) or ``torchscript``
(tracing based). Both produce a graph with symbolic batch and sequence axes; afterwards every
graph input and output gets the dim names of the :class:`ModelSpec`, whichever exporter ran.
"""

from __future__ import annotations

import contextlib
import inspect
import io

import onnx
import torch
from onnx import version_converter
from torch import nn

from favor.ops import fused_causal_attention

from .. import linear_attention
from ..errors import ExportError
from ..specs import ModelSpec
from ..versions import package_version
from .diagnostics import export_error
from .op_policy import check_allowed_ops, check_fusable
from .opsets import EXPORTERS, NATIVE_MAX_OPSET, check_opset, onnxruntime_limits, opset_of
from .split_rewrite import SPLIT_NUM_OUTPUTS_OPSET, split_sizes_as_input
from .torch_logs import quiet_torch_exporters


def _dynamic_shapes(module: nn.Module, spec: ModelSpec) -> tuple:
    """torch.export's ``dynamic_shapes``, nested to match ``forward``'s signature."""
    per_input = [
        {axis: torch.export.Dim.DYNAMIC for axis, d in enumerate(t.dims) if isinstance(d, str)}
        or None
        for t in spec.inputs
    ]
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[-1].kind == inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        return (*per_input[:fixed], tuple(per_input[fixed:]))
    return tuple(per_input)


def _torch_export(
    module: nn.Module,
    spec: ModelSpec,
    example: tuple,
    opset: int,
    exporter: str,
    output_dims,
    translations: dict | None = None,
) -> onnx.ModelProto:
    names = [t.name for t in spec.inputs]
    with quiet_torch_exporters():
        if exporter == "dynamo":
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=names,
                opset_version=min(opset, NATIVE_MAX_OPSET[exporter]),
                output_names=list(spec.output_names), dynamic_shapes=_dynamic_shapes(module, spec),
                optimize=True, verbose=False, custom_translation_table=translations,
            )  # fmt: skip
            return _convert(program.model_proto, opset)
        dynamic_axes = {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in spec.inputs
        }
        dynamic_axes |= {
            name: {i: d for i, d in enumerate(dims) if isinstance(d, str)}
            for name, dims in output_dims.items()
        }
        buffer = io.BytesIO()
        torch.onnx.export(
            module, example, buffer, dynamo=False,
            opset_version=min(opset, NATIVE_MAX_OPSET[exporter]),
            input_names=names, output_names=list(spec.output_names), dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )  # fmt: skip
        return _convert(onnx.load_from_string(buffer.getvalue()), opset)


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Bring ``model`` to ``opset`` with onnx's converter where torch's exporter stopped short.

    Every op our graphs use has converters upward from the exporters' native opsets.
    """
    if opset_of(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as error:  # onnx's converter raises bare RuntimeErrors
        detail = str(error).splitlines()[0].rsplit(": ", 1)[-1]
        raise ExportError(
            f"cannot convert the graph from opset {opset_of(model)} to {opset}: {detail}"
        ) from None


def _set_dims(value: onnx.ValueInfoProto, dims: tuple[int | str, ...]) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, int):
            entry.dim_value = d
        else:
            entry.dim_param = d


def build_onnx(
    module: nn.Module,
    spec: ModelSpec,
    dims: dict[str, tuple[int | str, ...]],
    *,
    opset: int,
    exporter: str,
    fused_attention: bool = False,
) -> onnx.ModelProto:
    """Export ``module`` to an ONNX model at exactly ``opset``, with dims named from ``spec``.

    ``dims`` are the output dims from :func:`describe_outputs`. ``fused_attention`` writes each
    causal FavorAttention's contraction as one ``LinearAttention`` node (see
    :mod:`favor.exporter.linear_attention`) instead of the portable chunked graph.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    check_opset(opset, exporter)
    if fused_attention:
        check_fusable(module, exporter)
    example = spec.example()
    switch = fused_causal_attention(module) if fused_attention else contextlib.nullcontext()
    try:
        with switch:
            model = _torch_export(
                module, spec, example, opset, exporter, dims,
                translations=linear_attention.translation_table() if fused_attention else None,
            )  # fmt: skip
        model = linear_attention.finish(model, opset)
    except ExportError:
        raise
    except Exception as error:  # torch's exporters raise many types; all mean "cannot export"
        raise export_error(module, example, error) from error
    if opset < SPLIT_NUM_OUTPUTS_OPSET:
        split_sizes_as_input(model)
    got = opset_of(model)
    if got != opset:
        raise ExportError(
            f"the {exporter} exporter produced opset {got}, not the requested {opset}"
        )
    check_allowed_ops(model, module, example)
    for value, spec_input in zip(model.graph.input, spec.inputs, strict=False):
        _set_dims(value, spec_input.dims)
    for value in model.graph.output:
        _set_dims(value, dims[value.name])
    # Intermediate shapes carry the exporter's own symbol names; the runtime needs none of them.
    del model.graph.value_info[:]
    _, max_ir = onnxruntime_limits()
    model.ir_version = min(model.ir_version, max_ir)
    model.producer_name = "favor-export"
    # A string is required: a source tree that was never installed has no version to give.
    model.producer_version = package_version("favor-export") or "0+unknown"
    return model
