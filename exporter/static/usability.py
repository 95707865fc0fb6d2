"""ONNX Runtime's mobile usability check of a written graph, as numbers and as its log.

This is what ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` runs: the graph is
optimized at ORT's basic level (as an ORT Mobile app's session would), then each NPU provider's
list of supported ops partitions it. The numbers are recorded in the manifest; the log lines are
the tool's own summary.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from onnxruntime.tools.mobile_helpers import usability_checker
from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

# Provider label -> the supported-ops list the tool reads for it.
PROVIDERS = {
    "nnapi": None,
    "coreml_mlprogram": "coreml_supported_mlprogram_ops.md",
    "coreml_neuralnetwork": "coreml_supported_neuralnetwork_ops.md",
}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += [line.rstrip() for line in record.getMessage().splitlines() if line.strip()]


def check_usability(path: Path) -> tuple[dict[str, dict], list[str]]:
    """``({provider: summary}, log lines)`` for the graph at ``path``.

    A summary holds ``nodes``, ``supported`` (nodes the provider takes), ``partitions``,
    ``partition_sizes``, ``unsupported_ops`` and ``dynamic_shape_nodes`` (nodes rejected only
    because a shape is dynamic), with the shapes as the graph fixes them.
    """
    logger = logging.getLogger(f"favor.exporter.static.usability.{path.name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lines = _Lines()
    logger.addHandler(lines)
    summaries = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / path.name
            optimize_model(path, optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            for provider, ops_list in PROVIDERS.items():
                if ops_list is None:
                    info = usability_checker.check_nnapi_partitions(model, True)
                else:
                    info = usability_checker.check_coreml_partitions(model, True, ops_list)
                info.print_analysis(logger, provider)
                summaries[provider] = {
                    "nodes": info.num_nodes,
                    "supported": info.num_supported_nodes,
                    "partitions": info.num_partitions,
                    "partition_sizes": [len(group) for group in info.supported_groups],
                    "unsupported_ops": sorted(info.unsupported_ops),
                    "dynamic_shape_nodes": info.nodes_unsupported_due_to_dynamic_input,
                }
    finally:
        logger.removeHandler(lines)
    return summaries, lines.lines


def summary_line(name: str, summaries: dict[str, dict]) -> str:
    """One line: ``NAME: nnapi 399/399 nodes in 1 partition, ...``."""
    parts = [
        f"{provider} {s['supported']}/{s['nodes']} nodes in {s['partitions']} partition"
        f"{'' if s['partitions'] == 1 else 's'}"
        for provider, s in summaries.items()
    ]
    return f"{name}: {', '.join(parts)}"
