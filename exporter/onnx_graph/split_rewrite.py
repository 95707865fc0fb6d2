"""Rewriting opset 18 ``Split(num_outputs)`` nodes into the sized form older opsets take."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Split takes its part count as the ``num_outputs`` attribute from opset 18; below, only sizes in
# its ``split`` input. The dynamo exporter writes opset 18 Splits, and its conversion down to 17
# keeps the attribute, which the checker then rejects.
SPLIT_NUM_OUTPUTS_OPSET = 18


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
