"""The dtype table against what numpy, ONNX Runtime and the manifest schema say themselves."""

import json
from importlib.resources import files

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from favor.runtime.dtypes import DTYPE_NAMES, DTYPES, numpy_dtype

# ONNX's element type for each manifest dtype name, written out here to check the table with.
ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


def test_the_names_are_the_schemas():
    schema = json.loads((files("favor.exporter") / "manifest.schema.json").read_text())
    assert tuple(schema["$defs"]["dtype"]["enum"]) == DTYPE_NAMES


@pytest.mark.parametrize("name", list(ONNX_TYPES), ids=list(ONNX_TYPES))
def test_onnxruntime_names_each_type_as_the_table_does(name):
    value = helper.make_tensor_value_info("x", ONNX_TYPES[name], [1])
    out = helper.make_tensor_value_info("y", ONNX_TYPES[name], [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == DTYPES[name].ort


@pytest.mark.parametrize("name", [n for n in DTYPE_NAMES if n != "bfloat16"])
def test_numpy_dtypes_are_numpys_own(name):
    assert numpy_dtype(name) == np.dtype(name)
    assert DTYPES[name].integer == name.startswith("int")


def test_bfloat16_has_no_numpy_dtype():
    assert DTYPES["bfloat16"].numpy is None and not DTYPES["bfloat16"].integer
    with pytest.raises(ValueError, match="numpy has no bfloat16 type"):
        numpy_dtype("bfloat16")
