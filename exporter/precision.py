"""Half-precision exports (``--dtype fp16|bf16``): cast a model, and say what it is held to.

**What is cast.** Every floating parameter and buffer outside the attention internals
(embeddings, linear layers, layer norms), so the activations between them run in the chosen
dtype, and every float graph input declared ``float32``.

**What stays float32.** :class:`~favor.ops.FavorAttention` and
:class:`~favor.ops.lara.LaraAttention` keep their projection matrices, feature weights,
calibration statistics and noise in float32, and compute feature maps, sums, the chunked
CumSum and the carried state in float32 whatever their inputs' dtype
(:func:`favor.ops.numerics.compute_dtype`); only their output is cast back, saturating.
:class:`~favor.ops.rotary.RotaryEmbedding` keeps its frequencies in float32: float16 cannot
even hold positions above 2048 exactly. Hence:

- no CumSum, ReduceSum or feature MatMul runs in half precision. ``exp`` of a feature
  overflows float16 past 11, and ONNX Runtime's CUDA CumSum accumulates in its input type;
- a causal LM's ``state.*`` inputs and ``new_state.*`` outputs stay float32 (a sum over the
  whole context), so favor.runtime feeds them back unchanged.

**Budget.** A half export is validated against the original float32 PyTorch model, run on the
same inputs (half inputs upcast): elementwise ``|half - fp32| <= atol + rtol |fp32|`` with
``atol = rtol = 50`` epsilons of the dtype: 0.049 for float16, 0.39 for bfloat16. That covers
rounding the weights and the activations between layers, measured on the reference models
(see :data:`BUDGETS`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from torch import nn

from favor.ops.rotary import RotaryEmbedding

from .attention_modules import is_attention
from .errors import ExportError
from .specs import TORCH_DTYPES, ModelSpec

DTYPES = ("float32", "float16", "bfloat16")
# The CLI's short names.
ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# (atol, rtol) against the float32 model: 50 machine epsilons of the dtype, 0.049 for float16
# and 0.39 for bfloat16. Measured with the exporter's own sweep (ONNX Runtime, TorchScript, ONNX's
# reference evaluator, prefill + decode; both torch exporters) on the tests' sample-sized
# PerformerLM and PerformerEncoder and on the trained sample char-LM (logits up to about 11), the
# smallest t with |half - fp32| <= t (1 + |fp32|) everywhere was 20 epsilons in both dtypes
# (float16 0.0197, bfloat16 0.165 through TorchScript; the char-LM's logits, 3 layers deep).
# 50 leaves 2.5x headroom, while a wrong weight or a float16 overflow misses by far more.
BUDGET_EPSILONS = 50
BUDGETS: dict[str, tuple[float, float]] = {
    dtype: (BUDGET_EPSILONS * torch.finfo(TORCH_DTYPES[dtype]).eps,) * 2
    for dtype in ("float16", "bfloat16")
}


def parse_dtype(name: str) -> str:
    """``fp16`` or ``float16`` -> ``"float16"``; :class:`ExportError` naming anything else."""
    dtype = ALIASES.get(name, name)
    if dtype not in DTYPES:
        choices = ", ".join(f"{short} ({long})" for short, long in ALIASES.items())
        raise ExportError(f"dtype must be one of {choices}, got {name!r}")
    return dtype


def files_precision(files: dict[str, Path]) -> tuple[str, bool]:
    """``(weights dtype, int8-quantized)`` of an export, read from its files, not its manifest.

    The dtype is the half type of an ONNX graph's initializers (the dynamic graph's, else a
    ``--static`` graph's; else the TorchScript archive's or the torch.export program's
    tensors), ``"float32"`` with none, and ``"mixed"`` with both half types; the graph is
    int8-quantized when it has integer MatMuls. Validation picks its tolerances by these, so a
    manifest cannot loosen them by claiming another precision. ValueError for an export with
    none of these files.
    """
    graph_role = next((role for role in GRAPH_ROLES if role in files), None)
    quantized = False
    if graph_role is not None:
        graph = onnx.load(str(files[graph_role]), load_external_data=False).graph
        types = {onnx.helper.tensor_dtype_to_string(i.data_type) for i in graph.initializer}
        found = {t.removeprefix("TensorProto.").lower() for t in types}
        quantized = any(node.op_type == "MatMulInteger" for node in graph.node)
    elif "torchscript" in files:
        archive = torch.jit.load(str(files["torchscript"]), map_location="cpu")
        found = _dtypes(itertools.chain(archive.parameters(), archive.buffers()))
    elif "pt2" in files:
        program = torch.export.load(str(files["pt2"]))
        found = _dtypes(itertools.chain(program.state_dict.values(), program.constants.values()))
    else:
        raise ValueError(f"no file among {', '.join(files)} holds the weights")
    half = found & {"float16", "bfloat16"}
    return ("float32" if not half else half.pop() if len(half) == 1 else "mixed"), quantized


# The roles of ONNX graphs that hold an export's weights, in the order they are read.
GRAPH_ROLES = ("onnx", "decode", "static")


def _dtypes(tensors: Iterable[object]) -> set[str]:
    return {str(t.dtype).removeprefix("torch.") for t in tensors if isinstance(t, torch.Tensor)}


def budget(dtype: str) -> tuple[float | None, float | None]:
    """``(atol, rtol)`` a ``dtype`` export is validated with; ``None`` keeps per-dtype defaults."""
    return BUDGETS.get(dtype, (None, None))


def float32_paths(model: nn.Module) -> list[str]:
    """Submodule paths whose parameters and buffers a half export keeps in float32: the
    attention layers and rotary embeddings, which compute in float32 anyway (see above)."""
    return [
        path
        for path, sub in model.named_modules()
        if is_attention(sub) or isinstance(sub, RotaryEmbedding)
    ]


def cast_model(model: nn.Module, dtype: str) -> nn.Module:
    """A copy of ``model`` in ``dtype``, except inside the modules :func:`float32_paths` names.

    ``model`` itself is left as it is: it stays the float32 reference.
    """
    if dtype == "float32":
        return model
    if isinstance(model, torch.jit.ScriptModule):
        raise ExportError(
            f"--dtype {dtype} needs a favor checkpoint or a pickled module: in a TorchScript "
            "archive the attention internals cannot be kept in float32"
        )
    target = TORCH_DTYPES[dtype]
    cast = copy.deepcopy(model)
    kept = {id(m) for path in float32_paths(cast) for m in cast.get_submodule(path).modules()}
    for sub in cast.modules():
        if id(sub) in kept:
            continue
        for param in sub.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(target)
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.is_floating_point():
                sub._buffers[name] = buffer.to(target)
    return cast.eval()


def cast_spec(spec: ModelSpec, dtype: str) -> ModelSpec:
    """``spec`` with its float32 inputs in ``dtype``; carried state inputs stay float32.

    The attention ops return their state in float32, so the state outputs the graph feeds back
    are float32 too.
    """
    if dtype == "float32":
        return spec
    states = {s.input for s in spec.states}
    inputs = []
    for tensor in spec.inputs:
        if tensor.name in states or not TORCH_DTYPES[tensor.dtype].is_floating_point:
            inputs.append(tensor)
        elif tensor.dtype in ("float32", dtype):
            inputs.append(dataclasses.replace(tensor, dtype=dtype))
        else:
            raise ExportError(
                f"input {tensor.name!r} is declared {tensor.dtype}; --dtype {dtype} casts "
                "float32 inputs only: declare it float32"
            )
    return dataclasses.replace(spec, inputs=tuple(inputs))


def uncast_spec(spec: ModelSpec, dtype: str) -> ModelSpec:
    """The float32 model's spec for an export whose float inputs :func:`cast_spec` made
    ``dtype``: those inputs back to float32."""
    if dtype == "float32":
        return spec
    inputs = tuple(
        dataclasses.replace(t, dtype="float32") if t.dtype == dtype else t for t in spec.inputs
    )
    return dataclasses.replace(spec, inputs=inputs)


def upcast(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Half inputs as float32, for the float32 reference model; others unchanged."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in inputs)
