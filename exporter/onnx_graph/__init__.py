"""torch -> ONNX, by job.

- :mod:`.opsets`: which opsets each torch exporter writes and the installed onnxruntime runs;
- :mod:`.torch_export`: :func:`build_onnx`, the export call, opset conversion and dim names;
- :mod:`.torch_logs`: silencing torch's exporters;
- :mod:`.diagnostics`: naming the submodule behind a failed export;
- :mod:`.split_rewrite`: the Split rewrite for opsets below 18;
- :mod:`.op_policy`: the ops a graph may not contain (:data:`FORBIDDEN_OPS`);
- :mod:`.saving`: :func:`save_onnx`, inline or external data, checked.
"""

from .op_policy import FORBIDDEN_OPS
from .opsets import (
    EXPORTERS,
    MIN_OPSET,
    MIN_OPSET_BY_EXPORTER,
    check_opset,
    onnxruntime_limits,
    opset_of,
)
from .saving import save_onnx
from .torch_export import build_onnx
from .torch_logs import quiet_torch_exporters

__all__ = [
    "EXPORTERS",
    "FORBIDDEN_OPS",
    "MIN_OPSET",
    "MIN_OPSET_BY_EXPORTER",
    "build_onnx",
    "check_opset",
    "onnxruntime_limits",
    "opset_of",
    "quiet_torch_exporters",
    "save_onnx",
]
