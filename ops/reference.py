"""Plain reference for the whole attention: textbook features, materialized matrix.

This is the independent computation the fast path is tested against. It uses the unbiased
feature maps of :func:`favor.ops.features.random_features` with none of the stabilizing shifts,
builds the full ``(Nq, Nk)`` matrix, and runs in whatever dtype it is given (tests use float64).
It is O(N^2) and overflows for large norms: tests only.
"""

from __future__ import annotations

import torch

from .features import random_features


def favor_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    kernel: str,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)``, ``v (B, H, Nk, Dv)``, ``w (M, D)``.

    Returns ``(B, H, Nq, Dv)``.
    """
    scale = q.shape[-1] ** -0.25
    w = w.to(q.dtype)
    scores = random_features(kernel, q * scale, w) @ random_features(kernel, k * scale, w).mT
    if causal:
        scores = torch.tril(scores)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], 0.0)
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)
