"""Rewrites of a fixed-shape ONNX graph into ops that mobile NPU providers run.

ONNX Runtime's NNAPI provider has no LayerNormalization, Erf, Cos, ReduceSum or ReduceMax, and
CoreML's MLProgram has no Gather and no Abs. Each rewrite below replaces one op by ops both
providers list, computing the same function:

* ``LayerNormalization`` (last axis) -> mean, variance, ``Sqrt`` and ``Div``;
* ``Erf`` -> Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, 4.4e-7 measured in
  float32 over [-6, 6]: a few ulps of 1), from ``Max``, ``Exp``, ``Mul``, ``Add`` and ``Div``
  (``|x| = max(x, -x)``);
* ``Cos(x)`` -> ``Sin(x + pi/2)`` (rounding of the argument: one ulp of the angle, the size of
  the rounding the angle already carries);
* ``ReduceSum`` over one axis of size ``n`` -> ``n * ReduceMean``;
* ``ReduceMax`` over the last axis -> ``GlobalMaxPool`` on a ``(1, rows, 1, n)`` view;
* ``Gather`` of rows of an initializer table (an embedding) -> a one-hot ``(..., V)`` matrix,
  ``relu(1 - |ids - v|)`` for ``v = 0..V-1``, times the table: exact, since the one-hot
  entries are exactly 0 and 1, at the cost of a ``V x dim`` product per token.

Every rewrite needs the static shapes of its inputs; the graph must have no dynamic dim.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2),
# t = 1 / (1 + p x), for x >= 0.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# Keeps x / (|x| + tiny) finite at x = 0, where erf's sign does not matter.
_TINY = 1e-30


class _Builder:
    """Fresh names, float32 scalar constants and new nodes for one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.taken = {v for n in graph.node for v in (*n.input, *n.output)}
        self.taken |= {t.name for t in graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        while True:
            self.count += 1
            name = f"{base}__npu{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, base: str, value: float) -> str:
        return self.constant(base, np.array(value, dtype=np.float32))

    def negated(self, x: str) -> str:
        """``-x`` as ``x * -1``: MLProgram has no Neg."""
        return self.op("Mul", [x, self.scalar("minus_one", -1.0)], "negated")

    def op(self, op_type: str, inputs: list[str], base: str, output: str | None = None, **attrs):
        output = output or self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def npu_friendly(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the ops named in the module docstring rewritten; the input is not changed.

    Raises ValueError for a rewritable op whose input shape is not fully static.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    shapes |= {t.name: list(t.dims) for t in model.graph.initializer}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    build = _Builder(model.graph)
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        rewrite = _REWRITES.get(node.op_type)
        if rewrite is None or not rewrite(node, build, shapes, constants):
            kept.append(node)
            continue
        kept += build.nodes
        build.nodes = []
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _static_shape(shapes: dict, name: str, node: onnx.NodeProto) -> list[int]:
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        raise ValueError(f"{node.op_type} node {node.name!r}: input {name!r} has no static shape")
    return shape


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _layer_norm(node, build: _Builder, shapes, constants) -> bool:
    rank = len(_static_shape(shapes, node.input[0], node))
    if _attribute(node, "axis", -1) not in (-1, rank - 1) or len(node.output) > 1:
        return False
    x, scale = node.input[0], node.input[1]
    mean = build.op("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
    centered = build.op("Sub", [x, mean], "ln_centered")
    square = build.op("Mul", [centered, centered], "ln_square")
    variance = build.op("ReduceMean", [square], "ln_var", axes=[-1], keepdims=1)
    eps = build.scalar("ln_eps", _attribute(node, "epsilon", 1e-5))
    std = build.op("Sqrt", [build.op("Add", [variance, eps], "ln_var_eps")], "ln_std")
    normed = build.op("Mul", [build.op("Div", [centered, std], "ln_normed"), scale], "ln_scaled")
    if len(node.input) > 2 and node.input[2]:
        build.op("Add", [normed, node.input[2]], "ln_out", output=node.output[0])
    else:
        build.op("Identity", [normed], "ln_out", output=node.output[0])
    return True


def _erf(node, build: _Builder, shapes, constants) -> bool:
    x = node.input[0]
    magnitude = build.op("Max", [x, build.negated(x)], "erf_abs")
    one = build.scalar("erf_one", 1.0)
    denominator = build.op(
        "Add", [one, build.op("Mul", [magnitude, build.scalar("erf_p", _ERF_P)], "erf_px")],
        "erf_den",
    )  # fmt: skip
    t = build.op("Div", [one, denominator], "erf_t")
    poly = build.scalar("erf_a5", _ERF_A[-1])
    for index, a in reversed(list(enumerate(_ERF_A[:-1], 1))):
        poly = build.op(
            "Add", [build.op("Mul", [poly, t], "erf_h"), build.scalar(f"erf_a{index}", a)], "erf_h"
        )
    poly = build.op("Mul", [poly, t], "erf_poly")
    square = build.op("Mul", [x, x], "erf_sq")
    decay = build.op("Exp", [build.negated(square)], "erf_exp")
    positive = build.op("Sub", [one, build.op("Mul", [poly, decay], "erf_tail")], "erf_pos")
    sign = build.op(
        "Div",
        [x, build.op("Add", [magnitude, build.scalar("erf_tiny", _TINY)], "erf_absd")],
        "erf_sign",
    )
    build.op("Mul", [sign, positive], "erf_out", output=node.output[0])
    return True


def _cos(node, build: _Builder, shapes, constants) -> bool:
    shifted = build.op("Add", [node.input[0], build.scalar("cos_shift", math.pi / 2)], "cos_arg")
    build.op("Sin", [shifted], "cos_out", output=node.output[0])
    return True


def _reduce_sum(node, build: _Builder, shapes, constants) -> bool:
    shape = _static_shape(shapes, node.input[0], node)
    axes = constants.get(node.input[1]) if len(node.input) > 1 else None
    if axes is None or axes.size != 1:
        return False
    axis = int(axes.reshape(-1)[0])
    keepdims = _attribute(node, "keepdims", 1)
    mean = build.op("ReduceMean", [node.input[0]], "sum_mean", axes=[axis], keepdims=keepdims)
    count = build.scalar("sum_count", float(shape[axis]))
    build.op("Mul", [mean, count], "sum_out", output=node.output[0])
    return True


def _reduce_max(node, build: _Builder, shapes, constants) -> bool:
    shape = _static_shape(shapes, node.input[0], node)
    axes = list(_attribute(node, "axes", []))
    if axes not in ([-1], [len(shape) - 1]):
        return False
    rows = math.prod(shape[:-1])
    view = build.constant("max_view", np.array([1, rows, 1, shape[-1]], dtype=np.int64))
    pooled = build.op(
        "GlobalMaxPool", [build.op("Reshape", [node.input[0], view], "max_in")], "max_pool"
    )
    kept = [*shape[:-1], 1] if _attribute(node, "keepdims", 1) else shape[:-1]
    back = build.constant("max_shape", np.array(kept, dtype=np.int64))
    build.op("Reshape", [pooled, back], "max_out", output=node.output[0])
    return True


def _gather(node, build: _Builder, shapes, constants) -> bool:
    table, ids = node.input
    rows = constants.get(table)
    if rows is None or rows.ndim != 2 or _attribute(node, "axis", 0) != 0 or ids in constants:
        return False
    _static_shape(shapes, ids, node)
    dtype = onnx.helper.np_dtype_to_tensor_dtype(rows.dtype)
    vocabulary = build.constant("onehot_range", np.arange(rows.shape[0], dtype=rows.dtype))
    values = build.op("Cast", [ids], "onehot_ids", to=dtype)
    difference = build.op(
        "Sub", [build.op("Unsqueeze", [values, build.constant("onehot_axis", np.array([-1]))], "onehot_col"), vocabulary],
        "onehot_diff",
    )  # fmt: skip
    distance = build.op("Max", [difference, build.negated(difference)], "onehot_abs")
    one = build.constant("onehot_one", np.array(1, dtype=rows.dtype))
    hot = build.op("Relu", [build.op("Sub", [one, distance], "onehot_near")], "onehot")
    build.op("MatMul", [hot, table], "onehot_rows", output=node.output[0])
    return True


_REWRITES = {
    "LayerNormalization": _layer_norm,
    "Erf": _erf,
    "Cos": _cos,
    "ReduceSum": _reduce_sum,
    "ReduceMax": _reduce_max,
    "Gather": _gather,
}
