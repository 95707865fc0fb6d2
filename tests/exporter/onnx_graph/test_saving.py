"""Saving a graph: inline or with external data, and refused when onnx's checker fails it."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from favor.exporter.errors import ExportError
from favor.exporter.onnx_graph import saving
from favor.exporter.onnx_graph.saving import save_onnx

WEIGHT = np.arange(32 * 32, dtype=np.float32).reshape(32, 32) / 100  # 4 KiB: large enough to move


def _matmul_model(op_type: str = "MatMul") -> onnx.ModelProto:
    """``y = x @ WEIGHT`` (or an unknown ``op_type`` in MatMul's place)."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(WEIGHT, "w")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _saved_weight(path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])


def test_a_small_graph_is_saved_inline(tmp_path):
    names = save_onnx(_matmul_model(), tmp_path / "m.onnx")
    assert names == ["m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    np.testing.assert_array_equal(_saved_weight(tmp_path / "m.onnx"), WEIGHT)


@pytest.mark.parametrize("chosen", ["asked", "by-size"])
def test_external_data_goes_beside_the_graph(chosen, tmp_path, monkeypatch):
    if chosen == "by-size":
        monkeypatch.setattr(saving, "EXTERNAL_DATA_THRESHOLD", 1024)
    names = save_onnx(
        _matmul_model(), tmp_path / "m.onnx", external_data=True if chosen == "asked" else None
    )
    assert names == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < WEIGHT.nbytes
    assert (tmp_path / "m.onnx.data").stat().st_size >= WEIGHT.nbytes
    np.testing.assert_array_equal(_saved_weight(tmp_path / "m.onnx"), WEIGHT)


def test_a_graph_the_checker_rejects_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match=r"^the exported graph fails onnx's checker: "):
        save_onnx(_matmul_model("NoSuchOp"), tmp_path / "m.onnx")
