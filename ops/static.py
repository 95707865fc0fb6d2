"""Causal attention at one fixed length: the form traced into graphs whose every shape is fixed.

Mobile NPUs (NNAPI, CoreML) take a graph only where every shape is known and every op is one
they run. The chunked prefix sums of :func:`~favor.ops.causal.causal_chunked` serve every length
with CumSum, Trilu and shape arithmetic, which they do not run. With the length fixed at trace
time, neither is needed:

* ``N = 1`` (a decode step) is the recurrent step :func:`~favor.ops.causal.causal_step`;
* ``N > 1`` (a prefill chunk) is one masked block: ``out = q S + (q k^T * tril) v`` and
  ``S' = S + k^T v``, with the triangular mask a constant of the traced length.

:func:`favor.ops.fusion.fixed_length_attention` switches a model's causal layers onto
:func:`causal_fixed` for the duration of such a trace. Outputs equal the chunked form's.
"""

from __future__ import annotations

import torch

from .causal import causal_step


def causal_fixed(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_q, phi_k (B, H, N, M)``, ``values (B, H, N, E)``, ``state (B, H, M, E)`` or None
    -> ``(out (B, H, N, E), new_state (B, H, M, E))``, as :func:`causal_chunked` computes them.

    ``N`` is a Python int here (a fixed-shape trace), so the branch and the mask are constants
    of the graph. ``chunk_size`` is accepted for the call signature and unused: the whole length
    is one block.
    """
    del chunk_size
    batch, heads, length, features = phi_q.shape
    if state is None:
        state = phi_q.new_zeros(batch, heads, features, values.shape[-1])
    if length == 1:
        out, new_state = causal_step(phi_q.squeeze(2), phi_k.squeeze(2), values.squeeze(2), state)
        return out.unsqueeze(2), new_state
    mask = causal_mask(length, phi_q.dtype)
    scores = (phi_q @ phi_k.transpose(-1, -2)) * mask
    out = phi_q @ state + scores @ values
    return out, state + phi_k.transpose(-1, -2) @ values


def causal_mask(length: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, N)`` lower-triangular ones, built from Python data so a trace stores it as a
    constant rather than the ops that make it (Trilu, Range)."""
    rows = [[1.0] * (i + 1) + [0.0] * (length - i - 1) for i in range(length)]
    return torch.tensor(rows, dtype=dtype)
