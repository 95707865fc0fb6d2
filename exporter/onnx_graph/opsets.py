"""Which opsets an export can target: what torch's exporters write and the installed
onnxruntime runs."""

from __future__ import annotations

import functools

import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import ExportError

EXPORTERS = ("dynamo", "torchscript")
# The lowest opset the exported graphs are tested at; the dynamo exporter cannot go below 17
# (it emits LayerNormalization, which older opsets lack).
MIN_OPSET = 14
MIN_OPSET_BY_EXPORTER = {"dynamo": 17, "torchscript": MIN_OPSET}
# The highest opset each of torch 2.13's exporters writes itself; higher ones come from onnx's
# version converter. (Asked for more, the dynamo exporter silently falls back to 18.)
NATIVE_MAX_OPSET = {"dynamo": 25, "torchscript": 20}


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


def opset_of(model: onnx.ModelProto) -> int | None:
    """The default-domain opset ``model`` imports; None if it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
