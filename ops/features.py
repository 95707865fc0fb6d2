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

KERNELS = ("posrf", "hyperbolic", "trigrf", "relu", "oprf", "gerf", "saderf")
# Kernels whose features are never negative, so the attention denominator is >= 0.
POSITIVE_KERNELS = ("posrf", "hyperbolic", "relu", "oprf", "gerf", "saderf")
# The positive exponential family of Likhosherstov et al. (2022), one map with a parameter
# ``a < 1/4`` (their ``A``): posrf is ``a = 0``; OPRF and GERF choose ``a``; SADERF also rescales
# queries and keys per coordinate (see :mod:`favor.ops.calibration`).
EXPONENTIAL_FAMILY = ("posrf", "oprf", "gerf", "saderf")
# Kernels with parameters beyond the projection, held by a KernelCalibration module.
PARAMETRIC_KERNELS = ("oprf", "gerf", "saderf")
# Of those, the ones whose parameters are statistics of the data rather than trained.
DATA_DEPENDENT_KERNELS = ("oprf", "saderf")

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


def _family_slope(a: torch.Tensor | None) -> torch.Tensor | None:
    """``b = sqrt(1 - 4a)``, the factor on ``w . x`` that keeps the family unbiased."""
    return None if a is None else torch.sqrt(1 - 4 * a)


def random_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Textbook, unbiased features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    The exponential family's map is ``(1 - 4a)^(d/4) exp(a |w|^2 + b w . x - |x|^2 / 2) / sqrt(M)``
    with ``b = sqrt(1 - 4a)``; ``a`` broadcasts against ``(..., 1)`` and ``None`` means 0 (PosRF).
    For ``relu`` the map defines its own kernel rather than estimating the softmax one.
    """
    proj = x @ w.T
    if kernel in EXPONENTIAL_FAMILY:
        if a is None:
            return torch.exp(proj - _half_sq_norm(x)) / math.sqrt(w.shape[0])
        b = _family_slope(a)
        log_scale = 0.25 * x.shape[-1] * torch.log(1 - 4 * a)
        logits = 2 * a * _half_sq_norm(w).T + b * proj - _half_sq_norm(x) + log_scale
        return torch.exp(logits) / math.sqrt(w.shape[0])
    if kernel == "hyperbolic":
        paired = torch.cat([proj, -proj], dim=-1)
        return torch.exp(paired - _half_sq_norm(x)) / math.sqrt(2 * w.shape[0])
    if kernel == "trigrf":
        paired = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return torch.exp(_half_sq_norm(x)) * paired / math.sqrt(w.shape[0])
    if kernel == "relu":
        return torch.relu(proj) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def key_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention-side key features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    For the exponential maps the log-feature is shifted by the constant ``-b^2 |w_i|^2 / 2``, which
    turns it into ``-|x - b w_i|^2 / 2 <= 0``: every key feature lies in ``(0, 1]`` whatever the
    other tokens are. Keys far from every ``b w_i`` underflow towards 0, which the denominator
    guard absorbs. The family's ``a |w|^2`` terms move to the query side.
    """
    if kernel in ("hyperbolic", *EXPONENTIAL_FAMILY):
        w = _exp_weights(kernel, w)
        b = _family_slope(a)
        if b is None:
            return torch.exp(x @ w.T - _half_sq_norm(x) - _half_sq_norm(w).T)
        return torch.exp(b * (x @ w.T) - _half_sq_norm(x) - b * b * _half_sq_norm(w).T)
    if kernel == "trigrf":
        proj = x @ w.T
        scale = torch.exp(torch.clamp(_half_sq_norm(x), max=TRIG_MAX_LOG_SCALE))
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) * scale
    if kernel == "relu":
        return torch.relu(x @ w.T) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def query_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention-side query features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    The exponential maps carry ``|w_i|^2 / 2``: the key side's ``-b^2 |w_i|^2 / 2`` plus the
    family's ``2a |w_i|^2`` (``b^2 / 2 + 2a = 1/2`` for every ``a``). They then subtract their own
    maximum, so the largest query feature is exactly 1. That shift cancels in the attention
    ratio, and so do the per-query ``|x|^2 / 2`` terms and the constant ``(1 - 4a)^(d/2)``,
    which are left out.
    """
    if kernel in ("hyperbolic", *EXPONENTIAL_FAMILY):
        w = _exp_weights(kernel, w)
        b = _family_slope(a)
        proj = x @ w.T if b is None else b * (x @ w.T)
        logits = proj + _half_sq_norm(w).T
        return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())
    if kernel == "trigrf":
        proj = x @ w.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
    if kernel == "relu":
        return torch.relu(x @ w.T) + RELU_EPS
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
