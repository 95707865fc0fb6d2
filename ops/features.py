"""Random feature maps ``phi`` with ``E[phi(x) . phi(y)] = exp(x . y)``.

``x`` and ``y`` are queries and keys already scaled by ``d**-0.25``, so ``exp(x . y)`` is SDPA's
softmax kernel ``exp(q . k / sqrt(d))``. ``w`` is the ``(M, d)`` projection from
:mod:`favor.ops.projections`.

Two versions of each map live here side by side:

* :func:`random_features` is the textbook map, normalized so that the kernel estimate is
  unbiased. It is the reference the tests check the maths against.
* :func:`query_features` and :func:`key_features` are what attention uses. They differ from the
  textbook map only by factors that cancel in ``phi(q) S / phi(q) z``: a constant per query, and a
  per-feature factor ``a_i`` on the query side matched by ``1 / a_i`` on the key side. The
  factors are chosen so that nothing overflows and no key feature depends on any other token,
  which keeps causal attention free of look-ahead.
"""

from __future__ import annotations

import math

import torch

KERNELS = ("posrf", "hyperbolic", "trigrf", "relu")
# Kernels whose features are never negative, so the attention denominator is >= 0.
POSITIVE_KERNELS = ("posrf", "hyperbolic", "relu")

# exp(x) overflows float32 above about 88.7; TrigRF's key scale exp(|x|^2 / 2) is clamped well
# below that so a sum over tens of thousands of keys times the values stays finite.
TRIG_MAX_LOG_SCALE = 60.0
RELU_EPS = 1e-3


def feature_dim(kernel: str, nb_features: int) -> int:
    """Length ``M'`` of the feature vector: ``2M`` for the paired maps, else ``M``."""
    return 2 * nb_features if kernel in ("hyperbolic", "trigrf") else nb_features


def _half_sq_norm(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(dim=-1, keepdim=True)


def _exp_weights(kernel: str, w: torch.Tensor) -> torch.Tensor:
    # The hyperbolic map is the positive map over the doubled set of directions [w, -w].
    return torch.cat([w, -w], dim=0) if kernel == "hyperbolic" else w


def random_features(kernel: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Textbook, unbiased features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    For ``relu`` the map defines its own kernel rather than estimating the softmax one.
    """
    proj = x @ w.T
    if kernel == "posrf":
        return torch.exp(proj - _half_sq_norm(x)) / math.sqrt(w.shape[0])
    if kernel == "hyperbolic":
        paired = torch.cat([proj, -proj], dim=-1)
        return torch.exp(paired - _half_sq_norm(x)) / math.sqrt(2 * w.shape[0])
    if kernel == "trigrf":
        paired = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return torch.exp(_half_sq_norm(x)) * paired / math.sqrt(w.shape[0])
    if kernel == "relu":
        return torch.relu(proj) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def key_features(kernel: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Attention-side key features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    For the exponential maps the log-feature is shifted by the constant ``-|w_i|^2 / 2``, which
    turns it into ``-|x - w_i|^2 / 2 <= 0``: every key feature lies in ``(0, 1]`` whatever the
    other tokens are. Keys far from every ``w_i`` underflow towards 0, which the denominator guard
    absorbs.
    """
    if kernel in ("posrf", "hyperbolic"):
        w = _exp_weights(kernel, w)
        return torch.exp(x @ w.T - _half_sq_norm(x) - _half_sq_norm(w).T)
    if kernel == "trigrf":
        proj = x @ w.T
        scale = torch.exp(torch.clamp(_half_sq_norm(x), max=TRIG_MAX_LOG_SCALE))
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) * scale
    if kernel == "relu":
        return torch.relu(x @ w.T) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def query_features(kernel: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Attention-side query features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    The exponential maps carry the ``+|w_i|^2 / 2`` that compensates the key-side shift, then
    subtract their own maximum, so the largest query feature is exactly 1. Both shifts cancel in
    the attention ratio; the per-query ``|x|^2 / 2`` terms cancel too and are left out.
    """
    if kernel in ("posrf", "hyperbolic"):
        w = _exp_weights(kernel, w)
        logits = x @ w.T + _half_sq_norm(w).T
        return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())
    if kernel == "trigrf":
        proj = x @ w.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
    if kernel == "relu":
        return torch.relu(x @ w.T) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
