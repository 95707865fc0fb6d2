"""Opset limits: what each torch exporter reaches down to and what onnxruntime loads."""

import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from favor.exporter.errors import ExportError
from favor.exporter.onnx_graph.opsets import check_opset, onnxruntime_limits, opset_of


def _relu_model(opset: int, ir_version: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )  # fmt: skip
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )


def _loads(model: onnx.ModelProto) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's own exception types
        return False
    return True


def test_onnxruntime_limits_are_the_highest_versions_onnxruntime_loads():
    opset, ir_version = onnxruntime_limits()
    assert _loads(_relu_model(opset, ir_version))
    if opset < onnx.defs.onnx_opset_version():
        assert not _loads(_relu_model(opset + 1, 7))
    if ir_version < onnx.IR_VERSION:
        assert not _loads(_relu_model(opset, ir_version + 1))


@pytest.mark.parametrize(
    ("exporter", "opset", "message"),
    [
        ("dynamo", 16, "opset 16 is below 17, the lowest the dynamo exporter produces"),
        ("torchscript", 13, "opset 13 is below 14, the lowest the torchscript exporter"),
    ],
    ids=["dynamo-16", "torchscript-13"],
)
def test_an_opset_below_what_the_exporter_writes_is_refused(exporter, opset, message):
    with pytest.raises(ExportError, match=message):
        check_opset(opset, exporter)


@pytest.mark.parametrize(("exporter", "opset"), [("dynamo", 17), ("torchscript", 14)])
def test_the_lowest_opset_of_each_exporter_is_accepted(exporter, opset):
    check_opset(opset, exporter)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_an_opset_above_what_onnxruntime_loads_is_refused(exporter):
    highest = onnxruntime_limits()[0]
    check_opset(highest, exporter)
    with pytest.raises(ExportError, match=f"above {highest}, the highest the installed"):
        check_opset(highest + 1, exporter)


def test_opset_of_reads_the_default_domain_import():
    model = _relu_model(17, 8)
    model.opset_import.insert(0, helper.make_opsetid("com.microsoft", 1))
    assert opset_of(model) == 17
    del model.opset_import[1]
    assert opset_of(model) is None
