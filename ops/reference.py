"""Textbook forms of the package's computations: the independent results tests compare against.

Each one evaluates its definition directly: full ``N x N`` matrices, explicit densities, no
stabilizing shifts and no log domain. They are O(N^2), overflow for large norms, and are meant to
run in float64. Tests only: no module of the package imports this one.

* :func:`causal_materialized`: causal linear attention on feature maps, the masked matrix that
  :func:`~favor.ops.causal.causal_chunked` and :func:`~favor.ops.causal.causal_step` compute
  without building.
* :func:`favor_attention_reference`: the whole of :class:`~favor.ops.attention.FavorAttention`,
  with the unbiased feature maps of :func:`~favor.ops.features.random_features`.
* :func:`lara_reference`: :class:`~favor.ops.lara.LaraAttention`'s estimator.
"""

from __future__ import annotations

import math

import torch

from .features import random_features
from .lara import ALPHA_FLOOR


def causal_materialized(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tril(phi_q phi_k^T) values (+ phi_q state)``. Returns ``(out, new_state)``.

    Shapes as in :mod:`favor.ops.causal`: ``phi_q, phi_k (B, H, N, M)``, ``values (B, H, N, E)``,
    ``state (B, H, M, E)``.
    """
    scores = torch.tril(phi_q @ phi_k.transpose(-1, -2))
    out = scores @ values
    new_state = phi_k.transpose(-1, -2) @ values
    if state is not None:
        out = out + phi_q @ state
        new_state = new_state + state
    return out, new_state


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


def lara_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Textbook LARA with the samples ``w = mu + eps``; ``eps (C, S, D)`` or ``(B, H, C, S, D)``.

    ``q, k (B, H, N, D)``, ``v (B, H, N, Dv)`` -> ``(B, H, N, Dv)``. Segments come from explicit
    boundaries ``ceil(c L / C)``; densities, features and MIS weights are evaluated directly,
    with no shifts and no log domain, so it overflows for large norms. Run it in float64.
    """
    batch, heads, length, dim = q.shape
    num_proposals = eps.shape[-3]
    x, y = q * dim**-0.25, k * dim**-0.25
    valid = torch.ones(batch, length, dtype=torch.bool)
    if key_padding_mask is not None:
        valid = ~key_padding_mask
    x_bar = x.new_zeros(batch, heads, num_proposals, dim)
    y_bar = torch.zeros_like(x_bar)
    occupied = torch.zeros(batch, num_proposals, dtype=torch.bool)
    for b in range(batch):
        tokens = valid[b].nonzero().flatten()
        bounds = [math.ceil(c * len(tokens) / num_proposals) for c in range(num_proposals + 1)]
        for c in range(num_proposals):
            segment = tokens[bounds[c] : bounds[c + 1]]
            if len(segment):
                x_bar[b, :, c] = x[b, :, segment].mean(dim=1)
                y_bar[b, :, c] = y[b, :, segment].mean(dim=1)
                occupied[b, c] = True
    mu = x_bar + y_bar
    w = mu.unsqueeze(-2) + eps  # (B, H, C, S, D)

    def gaussian(w: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return (2 * math.pi) ** (-dim / 2) * torch.exp(-0.5 * ((w - mean) ** 2).sum(dim=-1))

    prior = gaussian(w, 0.0)  # (B, H, C, S)
    # density[b, h, c, s, c'] = q_c'(w_cs)
    density = gaussian(w.unsqueeze(-2), mu[:, :, None, None])
    own = torch.diagonal(density, dim1=2, dim2=4).transpose(-1, -2)
    balance = own / density.sum(dim=-1)
    similarity = torch.exp(x @ x_bar.transpose(-1, -2)) * occupied[:, None, None, :]
    r = similarity / similarity.sum(dim=-1, keepdim=True)  # (B, H, N, C)
    alpha = (balance.unsqueeze(2) + (r - 1 / num_proposals).unsqueeze(-1)).clamp(min=ALPHA_FLOOR)

    def xi(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (B, H, N, C, S)
        projected = torch.einsum("bhnd,bhcsd->bhncs", x, w)
        return torch.exp(projected - 0.5 * (x * x).sum(dim=-1)[..., None, None])

    xi_k = xi(y) * valid[:, None, :, None, None]
    weighted_values = torch.einsum("bhmcs,bhme->bhcse", xi_k, v)
    weight = alpha * (prior / own).unsqueeze(2) * xi(x)  # (B, H, N, C, S)
    numerator = torch.einsum("bhncs,bhcse->bhne", weight, weighted_values)
    denominator = torch.einsum("bhncs,bhcs->bhn", weight, xi_k.sum(dim=2))
    return numerator / denominator.unsqueeze(-1)
