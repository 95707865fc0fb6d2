"""What an exported graph may contain: no randomness or control flow; fusion only where it applies."""

from __future__ import annotations

import onnx
import torch
from torch import nn

from favor.ops import causal_layers

from ..errors import ExportError
from .diagnostics import SUSPECT_ATEN, locate_ops

# Ops that would mean randomness or control flow inside the graph: never in an export, which is
# a static graph computing a fixed function of its inputs.
FORBIDDEN_OPS = {
    "RandomNormal": "random numbers",
    "RandomNormalLike": "random numbers",
    "RandomUniform": "random numbers",
    "RandomUniformLike": "random numbers",
    "Multinomial": "random numbers",
    "Bernoulli": "random numbers",
    "Loop": "data-dependent control flow",
    "If": "data-dependent control flow",
    "Scan": "a loop over a sequence",
    "SequenceMap": "a loop over a sequence",
}


def check_allowed_ops(
    model: onnx.ModelProto, module: nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    """Raise :class:`ExportError` naming each :data:`FORBIDDEN_OPS` op in ``model``'s graph,
    and where ``module``'s forward on ``example`` calls the aten ops that explain it."""
    forbidden = sorted(
        {
            f"{n.op_type} ({FORBIDDEN_OPS[n.op_type]})"
            for n in model.graph.node
            if n.op_type in FORBIDDEN_OPS
        }
    )
    if not forbidden:
        return
    culprits = locate_ops(module, example, SUSPECT_ATEN)
    where = f" (called at {'; '.join(culprits)})" if culprits else ""
    raise ExportError(
        f"the exported graph contains {', '.join(forbidden)}{where}; "
        "forward must not draw random numbers, branch on data or loop"
    )


def check_fusable(module: nn.Module, exporter: str) -> None:
    if exporter != "dynamo":
        raise ExportError(
            "--fused-attention needs the dynamo exporter; the torchscript exporter cannot "
            "translate the fused op"
        )
    if not causal_layers(module):
        raise ExportError(
            "--fused-attention fuses causal attention, and the model has no causal "
            "FavorAttention layer"
        )
