"""Fixed-shape graphs of a model, traced for NPUs, and written sharing one weights file.

:func:`fixed_graph` traces the export's module at fixed sizes (every symbolic dim replaced)
with causal attention in its fixed-length form (:func:`favor.ops.fixed_length_attention`: the
recurrent step at ``seq = 1``, one masked block otherwise), then rewrites the ops NPU
providers lack (:mod:`.npu_ops`). :func:`save_sharing_weights` writes several such graphs with
their weights in one external data file that each graph references.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import set_external_data
from torch import nn

from favor.ops import fixed_length_attention

from ..errors import ExportError
from ..onnx_graph import build_onnx
from ..specs import ModelSpec
from .npu_ops import npu_friendly

# Tensors at least this large go to the shared file; smaller ones (scalars, shapes) stay inline.
SHARED_MIN_BYTES = 1024


def fixed_spec(spec: ModelSpec, sizes: Mapping[str, int]) -> ModelSpec:
    """``spec`` with every symbolic dim set to its size in ``sizes``."""
    missing = sorted({d for t in spec.inputs for d in t.dims if isinstance(d, str)} - set(sizes))
    if missing:
        raise ExportError(f"--static needs a fixed size for {', '.join(missing)}")
    inputs = tuple(
        dataclasses.replace(t, dims=tuple(sizes[d] if isinstance(d, str) else d for d in t.dims))
        for t in spec.inputs
    )
    return dataclasses.replace(spec, inputs=inputs, example_sizes={}, sweep=())


def fixed_graph(
    module: nn.Module, spec: ModelSpec, sizes: Mapping[str, int], opset: int
) -> onnx.ModelProto:
    """``module`` (called as ``spec`` says) as an ONNX graph at ``sizes``, every shape fixed."""
    fixed = fixed_spec(spec, sizes)
    with torch.no_grad():
        outputs = module(*fixed.example())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    dims = {name: tuple(o.shape) for name, o in zip(spec.output_names, outputs, strict=True)}
    with fixed_length_attention(module):
        graph = build_onnx(module, fixed, dims, opset=opset, exporter="dynamo")
    return npu_friendly(graph)


def save_sharing_weights(
    graphs: Mapping[str, onnx.ModelProto], paths: Mapping[str, Path], data: Path
) -> None:
    """Write ``graphs[role]`` to ``paths[role]``, every large weight once into ``data``.

    A tensor is stored once by content (dtype, dims and bytes), so a weight both graphs hold is
    one range of ``data`` that both reference. Each graph is checked from its written file.
    """
    stored: dict[str, tuple[int, int]] = {}
    with data.open("wb") as out:
        for role, graph in graphs.items():
            for tensor in graph.graph.initializer:
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < SHARED_MIN_BYTES:
                    continue
                key = hashlib.sha256(
                    f"{tensor.data_type}:{list(tensor.dims)}:".encode() + tensor.raw_data
                ).hexdigest()
                if key not in stored:
                    stored[key] = (out.tell(), len(tensor.raw_data))
                    out.write(tensor.raw_data)
                offset, length = stored[key]
                set_external_data(tensor, data.name, offset, length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save_model(graph, str(paths[role]))
            try:
                onnx.checker.check_model(str(paths[role]), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
                raise ExportError(
                    f"the static {role} graph fails onnx's checker: {str(error).splitlines()[0]}"
                ) from None
