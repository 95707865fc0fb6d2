"""Split(num_outputs) rewritten for opsets below 18: the same parts, checked by onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from favor.exporter.onnx_graph.split_rewrite import split_sizes_as_input
from tests.exporter.onnx_graph.splits import num_outputs_splits


def _split_graph(dims: list, parts: int, opset: int) -> onnx.ModelProto:
    """``x -> Split(x, axis=1, num_outputs=parts)``, declared at ``opset``."""
    outputs = [f"part_{i}" for i in range(parts)]
    graph = helper.make_graph(
        [helper.make_node("Split", ["x"], outputs, name="split", axis=1, num_outputs=parts)],
        "split",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [2, f"{o}_dim", 3])
            for o in outputs
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("axis_dim", ["fixed", "symbolic"])
@pytest.mark.parametrize(
    ("size", "parts", "sizes"),
    [(8, 2, [4, 4]), (7, 2, [4, 3]), (7, 3, [3, 3, 1]), (12, 4, [3, 3, 3, 3])],
    ids=["8-by-2", "7-by-2", "7-by-3", "12-by-4"],
)
def test_num_outputs_split_becomes_opset_13_split_with_the_same_parts(size, parts, sizes, axis_dim):
    x = np.arange(2 * size * 3, dtype=np.float32).reshape(2, size, 3)
    dims = [2, size if axis_dim == "fixed" else "n", 3]
    want = ort.InferenceSession(_split_graph(dims, parts, 18).SerializeToString()).run(
        None, {"x": x}
    )
    model = _split_graph(dims, parts, 17)
    split_sizes_as_input(model)
    onnx.checker.check_model(model, full_check=True)
    assert num_outputs_splits(model) == []
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert [part.shape[1] for part in got] == sizes
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_the_rewrite_takes_names_no_value_of_the_graph_uses():
    model = _split_graph([2, "n", 3], 2, 17)
    # Values named as the rewrite would name its own, were it not to look.
    taken = ["split_sizes_shape", "split_sizes_dim", "split_sizes_size", "split_sizes_sizes"]
    for name in taken:
        model.graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.FLOAT, [1], [0]))
    split_sizes_as_input(model)
    onnx.checker.check_model(model, full_check=True)
    produced = [o for n in model.graph.node for o in n.output]
    assert not set(produced) & set(taken)
    assert len(produced) == len(set(produced))
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(np.concatenate(got, axis=1), x)
