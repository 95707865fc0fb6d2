"""torch -> ONNX: run torch's exporter, then name the dims, check the graph and save it.

Either of torch's exporters can be used: ``dynamo`` (torch.export based) or ``torchscript``
(tracing based). Both produce a graph with symbolic batch and sequence axes; afterwards every
graph input and output gets the dim names of the :class:`ModelSpec`, whichever exporter ran.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.utils._python_dispatch
from onnx import helper, numpy_helper, version_converter
from torch import nn

from favor.ops.fused import causal_layers, fused_causal_attention

from . import linear_attention
from .errors import ExportError, exception_chain, one_line
from .specs import ModelSpec
from .versions import package_version

EXPORTERS = ("dynamo", "torchscript")
# The lowest opset the exported graphs are tested at; the dynamo exporter cannot go below 17
# (it emits LayerNormalization, which older opsets lack).
MIN_OPSET = 14
MIN_OPSET_BY_EXPORTER = {"dynamo": 17, "torchscript": MIN_OPSET}
# The highest opset each of torch 2.13's exporters writes itself; higher ones come from onnx's
# version converter. (Asked for more, the dynamo exporter silently falls back to 18.)
NATIVE_MAX_OPSET = {"dynamo": 25, "torchscript": 20}
# Split takes its part count as the ``num_outputs`` attribute from opset 18; below, only sizes in
# its ``split`` input. The dynamo exporter writes opset 18 Splits, and its conversion down to 17
# keeps the attribute, which the checker then rejects.
SPLIT_NUM_OUTPUTS_OPSET = 18
# Ops that would mean randomness or control flow inside the graph: never in an export, which is
# a static graph computing a fixed function of its inputs.
FORBIDDEN_OPS = {
    "RandomNormal": "random numbers",
    "RandomNormalLike": "random numbers",
    "RandomUniform": "random numbers",
    "RandomUniformLike": "random numbers",
    "Multinomial": "random numbers",
    "Bernoulli": "random numbers",
    "Loop": "data-dependent control flow",
    "If": "data-dependent control flow",
    "Scan": "a loop over a sequence",
}
# aten ops whose appearance in forward explains a forbidden graph op or a failed export.
_SUSPECT_ATEN = re.compile(
    r"^aten::(rand|randn|randint|normal|bernoulli|multinomial|linalg_|_linalg_|geqrf|cholesky|qr|svd|eig)"
)


@functools.cache
def onnxruntime_limits() -> tuple[int, int]:
    """``(highest opset, highest IR version)`` that the installed onnxruntime loads.

    Probed with a one-node graph rather than read from a table, so a newer onnxruntime needs no
    code change here.
    """

    def loads(opset: int, ir_version: int) -> bool:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )  # fmt: skip
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
        )
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime raises its own exception types for unsupported versions
            return False
        return True

    max_opset = max(o for o in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1) if loads(o, 7))
    max_ir = max(v for v in range(7, onnx.IR_VERSION + 1) if loads(max_opset, v))
    return max_opset, max_ir


def check_opset(opset: int, exporter: str) -> None:
    """Raise :class:`ExportError` for an opset outside what this exporter and onnxruntime do."""
    highest, _ = onnxruntime_limits()
    lowest = MIN_OPSET_BY_EXPORTER[exporter]
    if opset < lowest:
        hint = " (the torchscript exporter reaches down to 14)" if exporter == "dynamo" else ""
        raise ExportError(
            f"opset {opset} is below {lowest}, the lowest the {exporter} exporter produces "
            f"for these graphs{hint}"
        )
    if opset > highest:
        raise ExportError(
            f"opset {opset} is above {highest}, the highest the installed onnxruntime "
            f"{ort.__version__} runs"
        )


@contextlib.contextmanager
def quiet_torch_exporters() -> Iterator[None]:
    """Silence torch's deprecation and progress chatter; our own progress reports replace it."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


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


def _pop_into(stack: list[str]) -> Callable:
    # A forward hook that returns a value replaces the module's output: return None explicitly.
    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        stack.pop()

    return hook


def locate_ops(
    module: nn.Module, example: tuple[torch.Tensor, ...], pattern: re.Pattern
) -> list[str]:
    """``"submodule.path: aten::op"`` for each op matching ``pattern`` that forward calls."""
    stack = ["<root>"]
    found: list[str] = []
    handles = []
    if any(isinstance(sub, torch.jit.ScriptModule) for sub in module.modules()):
        return []  # TorchScript modules take no hooks
    for name, sub in module.named_modules():
        name = name.removeprefix("model.") if name != "model" else ""
        handles.append(
            sub.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n or "<root>"))
        )
        handles.append(sub.register_forward_hook(_pop_into(stack)))

    class Recorder(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func._schema.name
            if pattern.match(op):
                entry = f"{stack[-1]}: {op}"
                if entry not in found:
                    found.append(entry)
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Recorder():
            module(*example)
    except Exception:  # the op locator is best effort: the export error is what matters
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found


def _export_error(module: nn.Module, example: tuple, error: Exception) -> ExportError:
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(error).split()))
    # torch's tracing exporter names ops aten::name, the dynamo one aten.name.overload.
    match = re.search(r"aten(?:::|\.)([A-Za-z0-9_]+)", text)
    culprits = []
    if match:
        culprits = locate_ops(module, example, re.compile(f"^aten::{re.escape(match[1])}$"))
    if not culprits:
        culprits = locate_ops(module, example, _SUSPECT_ATEN)
    where = f" (called at {'; '.join(culprits)})" if culprits else ""
    if match:
        return ExportError(
            f"the model cannot be exported to ONNX: unsupported op aten::{match[1]}{where}"
        )
    # torch's exporters wrap the cause in pages of advice: name the innermost exception.
    cause = one_line(exception_chain(error)[-1])
    return ExportError(f"the model cannot be exported to ONNX: {cause}{where}")


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


def _opset_of(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Bring ``model`` to ``opset`` with onnx's converter where torch's exporter stopped short.

    Every op our graphs use has converters upward from the exporters' native opsets.
    """
    if _opset_of(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as error:  # onnx's converter raises bare RuntimeErrors
        detail = str(error).splitlines()[0].rsplit(": ", 1)[-1]
        raise ExportError(
            f"cannot convert the graph from opset {_opset_of(model)} to {opset}: {detail}"
        ) from None


def _known_dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """Each value's dims as far as the graph records them: an int where fixed, else None."""
    dims: dict[str, list[int | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            dims[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            ]
    return dims


class _GraphBuilder:
    """Adds constants and nodes to ``graph`` under names no value or node there uses."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        for node in graph.node:
            self.taken.update([node.name, *node.input, *node.output])
        self.nodes: list[onnx.NodeProto] = []

    def name(self, base: str) -> str:
        candidate, count = base, 0
        while candidate in self.taken:
            count += 1
            candidate = f"{base}_{count}"
        self.taken.add(candidate)
        return candidate

    def ints(self, base: str, values: list[int]) -> str:
        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def node(self, op_type: str, inputs: list[str], base: str, **attributes) -> str:
        output = self.name(base)
        self.nodes.append(
            helper.make_node(
                op_type, inputs, [output], name=self.name(f"{base}_node"), **attributes
            )
        )
        return output

    def take_nodes(self) -> list[onnx.NodeProto]:
        """The nodes added since the last call, in the order they must run."""
        nodes, self.nodes = self.nodes, []
        return nodes


def _split_sizes(dim: int, parts: int) -> list[int]:
    """Split-18's sizes for ``num_outputs``: ``ceil(dim / parts)`` each, the last the remainder."""
    size = -(-dim // parts)
    return [size] * (parts - 1) + [dim - size * (parts - 1)]


def _split_sizes_in_graph(build: _GraphBuilder, data: str, axis: int, parts: int, base: str) -> str:
    """:func:`_split_sizes` as graph ops, for an axis whose size is only known at run time."""
    shape = build.node("Shape", [data], f"{base}_shape")
    dim = build.node("Gather", [shape, build.ints(f"{base}_axis", [axis])], f"{base}_dim")
    but_last = build.ints(f"{base}_parts_but_last", [parts - 1])
    rounded_up = build.node("Add", [dim, but_last], f"{base}_rounded_up")
    size = build.node("Div", [rounded_up, build.ints(f"{base}_parts", [parts])], f"{base}_size")
    head = build.node("Expand", [size, but_last], f"{base}_head")
    head_total = build.node("Mul", [size, but_last], f"{base}_head_total")
    last = build.node("Sub", [dim, head_total], f"{base}_last")
    return build.node("Concat", [head, last], f"{base}_sizes", axis=0)


def _num_outputs_split(node: onnx.NodeProto) -> tuple[int, int] | None:
    """``(num_outputs, axis)`` of an opset 18 style Split; None for any other node."""
    if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
        return None
    attributes = {a.name: a.i for a in node.attribute}
    if "num_outputs" not in attributes:
        return None
    return attributes["num_outputs"], attributes.get("axis", 0)


def split_sizes_as_input(model: onnx.ModelProto) -> None:
    """Rewrite, in place, every Split with opset 18's ``num_outputs`` into opset 13's form.

    The part sizes go to the ``split`` input: a constant where the split axis has a fixed size
    in the graph, computed from ``Shape`` where it is symbolic. Either way they are Split-18's:
    ``ceil(size / num_outputs)`` for each part, the remainder for the last.
    """
    graph = model.graph
    dims = _known_dims(graph)
    build = _GraphBuilder(graph)
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        found = _num_outputs_split(node)
        if found is None:
            rewritten.append(node)
            continue
        parts, axis = found
        shape = dims.get(node.input[0])
        size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        base = f"{node.name or node.output[0]}_sizes"
        sizes = (
            build.ints(base, _split_sizes(size, parts))
            if size is not None
            else _split_sizes_in_graph(build, node.input[0], axis, parts, base)
        )
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.input[:] = [node.input[0], sizes]
        rewritten.extend([*build.take_nodes(), node])
    del graph.node[:]
    graph.node.extend(rewritten)


def describe_outputs(
    module: nn.Module, spec: ModelSpec
) -> tuple[dict[str, tuple[int | str, ...]], dict[str, str]]:
    """``(dims, dtypes)`` of each output. A dim is a symbol where it tracks an input symbol and
    an int where it is fixed.

    Found by running the module at two sets of sizes that share no values, so a dim that
    follows ``seq`` is told apart from one that follows ``batch`` or from a constant.
    """
    first = spec.example_sizes
    second = {s: size + 5 + 2 * i for i, (s, size) in enumerate(first.items())}
    with torch.no_grad():
        runs = [module(*spec.sample(sizes)) for sizes in (first, second)]
    runs = [r if isinstance(r, tuple) else (r,) for r in runs]
    dims: dict[str, tuple[int | str, ...]] = {}
    for name, a, b in zip(spec.output_names, *runs, strict=True):
        entry: list[int | str] = []
        for axis, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)):
            symbol = next((s for s in first if first[s] == x and second[s] == y), None)
            entry.append(symbol or (x if x == y else f"{name}_dim{axis}"))
        dims[name] = tuple(entry)
    dtypes = {
        n: str(t.dtype).removeprefix("torch.")
        for n, t in zip(spec.output_names, runs[0], strict=True)
    }
    return dims, dtypes


def _set_dims(value: onnx.ValueInfoProto, dims: tuple[int | str, ...]) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, int):
            entry.dim_value = d
        else:
            entry.dim_param = d


def check_allowed_ops(
    model: onnx.ModelProto, module: nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    """Raise :class:`ExportError` naming each :data:`FORBIDDEN_OPS` op in ``model``'s graph,
    and where ``module``'s forward on ``example`` calls the aten ops that explain it."""
    forbidden = sorted(
        {
            f"{n.op_type} ({FORBIDDEN_OPS[n.op_type]})"
            for n in model.graph.node
            if n.op_type in FORBIDDEN_OPS
        }
    )
    if not forbidden:
        return
    culprits = locate_ops(module, example, _SUSPECT_ATEN)
    where = f" (called at {'; '.join(culprits)})" if culprits else ""
    raise ExportError(
        f"the exported graph contains {', '.join(forbidden)}{where}; "
        "forward must not draw random numbers, branch on data or loop"
    )


def _check_fusable(module: nn.Module, exporter: str) -> None:
    if exporter != "dynamo":
        raise ExportError(
            "--fused-attention needs the dynamo exporter; the torchscript exporter cannot "
            "translate the fused op"
        )
    if not causal_layers(module):
        raise ExportError(
            "--fused-attention fuses causal attention, and the model has no causal "
            "FavorAttention layer"
        )


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
        _check_fusable(module, exporter)
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
        raise _export_error(module, example, error) from error
    if opset < SPLIT_NUM_OUTPUTS_OPSET:
        split_sizes_as_input(model)
    got = _opset_of(model)
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


# Graphs above this size go to external data: protobuf cannot hold more than 2 GiB.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def save_onnx(
    model: onnx.ModelProto, path: Path, *, external_data: bool | None = None
) -> list[str]:
    """Write ``model`` to ``path`` (and ``<name>.data`` for large models); return the file names.

    ``external_data=None`` decides by size. The graph is checked with ``full_check=True`` (which
    includes strict shape inference) from the written file, which works at any size.
    """
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    names = [path.name]
    if external_data:
        data_name = path.name + ".data"
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        names.append(data_name)
    else:
        onnx.save_model(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(
            f"the exported graph fails onnx's checker: {str(error).splitlines()[0]}"
        ) from None
    return names
