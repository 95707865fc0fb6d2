"""Non-causal linear attention on feature maps, with an optional carried state.

Shapes: ``phi_q (B, H, Nq, M)``, ``phi_k (B, H, Nk, M)``, ``values (B, H, Nk, E)`` where the last
column of ``values`` is all ones, so the last output column is the attention denominator and the
state ``(B, H, M, E)`` holds ``S = sum phi(k) v^T`` and ``z = sum phi(k)`` in one tensor.
"""

from __future__ import annotations

import torch


def noncausal(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_q (phi_k^T values)`` in O(N M E). Returns ``(out, new_state)``."""
    summary = phi_k.transpose(-1, -2) @ values
    if state is not None:
        summary = summary + state
    return phi_q @ summary, summary
