"""Causal linear attention as one opaque op, for runtimes that run it fused.

ONNX Runtime has a ``LinearAttention`` kernel (``com.microsoft``, and ONNX's own op from opset
27) whose ``update_rule="linear"`` recurrence ``S_t = S_{t-1} + k_t v_t^T, o_t = q_t^T S_t`` is
exactly this package's causal contraction: feed it the feature maps, and values with the ones
column, and the last output column is the denominator. To get one node instead of the chunked
graph, the contraction must reach the ONNX exporter as one op rather than as the matmuls and
cumsums it is made of: :func:`causal_linear_attention` is that op, registered with
``torch.library``. Its PyTorch implementation *is* :func:`~favor.ops.causal.causal_chunked`, so
PyTorch results do not change. ``favor.exporter`` translates it to the ONNX node.

This module is the op alone; :mod:`favor.ops.fusion` switches a model's layers onto it.
"""

from __future__ import annotations

import torch

from .causal import causal_chunked

OP_NAME = "favor::causal_linear_attention"


@torch.library.custom_op(OP_NAME, mutates_args=())
def causal_linear_attention(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`causal_chunked` as one op: ``phi_q, phi_k (B, H, N, M)``, ``values (B, H, N, E)``,
    ``state (B, H, M, E)`` or None -> ``(out (B, H, N, E), new_state (B, H, M, E))``.
    """
    out, new_state = causal_chunked(phi_q, phi_k, values, state, chunk_size=chunk_size)
    # A custom op's outputs must own their memory: views of internal buffers are not allowed.
    return out.contiguous(), new_state.contiguous()


@causal_linear_attention.register_fake
def _(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, _, features = phi_q.shape
    return values.new_empty(values.shape), values.new_empty(
        batch, heads, features, values.shape[-1]
    )
