"""Fixed-shape graphs for mobile NPUs (``--static``): tracing, NPU op rewrites, shared weights,
and ONNX Runtime's mobile usability check. :mod:`favor.exporter.formats.static` is the format."""

from .graphs import fixed_graph, fixed_spec, save_sharing_weights
from .npu_ops import npu_friendly
from .usability import check_usability, summary_line

__all__ = [
    "check_usability",
    "fixed_graph",
    "fixed_spec",
    "npu_friendly",
    "save_sharing_weights",
    "summary_line",
]
