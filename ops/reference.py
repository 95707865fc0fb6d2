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
    a: torch.Tensor | None = None,
    psi: torch.Tensor | None = None,
    feature_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)``, ``v (B, H, Nk, Dv)``, ``w (M, D)``.

    ``a`` is the exponential family's parameter and ``psi (D,)`` SADERF's rescaling (queries
    times ``psi``, keys divided by it); ``feature_weights (M',)`` are quadrature weights times
    ``M``, multiplying each feature's term of the kernel estimate. Returns ``(B, H, Nq, Dv)``.
    """
    x, y = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
    if psi is not None:
        x, y = x * psi.to(q.dtype), y / psi.to(q.dtype)
    w = w.to(q.dtype)
    a = None if a is None else torch.as_tensor(a, dtype=q.dtype)
    phi_q = random_features(kernel, x, w, a=a)
    if feature_weights is not None:
        phi_q = phi_q * feature_weights.to(q.dtype)
    scores = phi_q @ random_features(kernel, y, w, a=a).mT
    if causal:
        scores = torch.tril(scores)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], 0.0)
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)
