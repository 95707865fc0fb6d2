"""Random feature maps ``phi`` with ``E[phi(x) . phi(y)] = exp(x . y)``, one :class:`Kernel` each.

``x`` and ``y`` are queries and keys already scaled by ``d**-0.25``, so ``exp(x . y)`` is SDPA's
softmax kernel ``exp(q . k / sqrt(d))``. ``w`` is the ``(M, d)`` projection from
:mod:`favor.ops.projections`.

Every kernel carries two versions of its map, written side by side below:

* the textbook map (:func:`random_features`), normalized so that the kernel estimate is
  unbiased. It is the reference the tests check the maths against.
* the query and key maps (:func:`query_features`, :func:`key_features`) that attention uses. They
  differ from the textbook map only by factors that cancel in ``phi(q) S / phi(q) z``: a constant
  per query, and a per-feature factor ``a_i`` on the query side matched by ``1 / a_i`` on the key
  side. The factors are chosen so that nothing overflows and no key feature depends on any other
  token, which keeps causal attention free of look-ahead.

:data:`KERNEL_REGISTRY` maps each ``kernel=`` name to its object; the name tuples below are read
off it, so a new kernel is one :class:`Kernel` added to the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checks import check_choice

FeatureMap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``(x (..., d), w (M, d), a) -> (..., M')``; ``a`` is the exponential family's parameter."""

# exp(x) overflows float32 above about 88.7; TrigRF's key scale exp(|x|^2 / 2) is clamped well
# below that so a sum over tens of thousands of keys times the values stays finite.
TRIG_MAX_LOG_SCALE = 60.0
RELU_EPS = 1e-3


@dataclass(frozen=True)
class Kernel:
    """One random-feature kernel: its maps and the properties attention decides things by.

    ``textbook`` is the unbiased map, ``query`` and ``key`` the stabilized pair attention uses;
    all three take ``a=None`` unless the kernel is in the exponential family. ``paired`` maps
    give ``M' = 2M`` features. ``signed`` features can be negative, so the attention
    denominator can be too. ``family`` kernels are members of the positive exponential family
    of Likhosherstov et al. (2022), one map with a parameter ``a < 1/4`` (their ``A``).
    ``parametric`` kernels have parameters beyond the projection, held by a
    :class:`favor.ops.calibration.KernelCalibration`; ``data_dependent`` ones take them from
    statistics of the data rather than training.
    """

    name: str
    textbook: FeatureMap
    query: FeatureMap
    key: FeatureMap
    paired: bool = False
    signed: bool = False
    family: bool = False
    parametric: bool = False
    data_dependent: bool = False

    def feature_dim(self, nb_features: int) -> int:
        """Length ``M'`` of the feature vector for ``M = nb_features`` projection rows."""
        return 2 * nb_features if self.paired else nb_features


def _half_sq_norm(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(dim=-1, keepdim=True)


def _family_slope(a: torch.Tensor | None) -> torch.Tensor | None:
    """``b = sqrt(1 - 4a)``, the factor on ``w . x`` that keeps the family unbiased."""
    return None if a is None else torch.sqrt(1 - 4 * a)


def _family_textbook(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """``(1 - 4a)^(d/4) exp(a |w|^2 + b w . x - |x|^2 / 2) / sqrt(M)`` with ``b = sqrt(1 - 4a)``.

    ``a`` broadcasts against ``(..., 1)``; ``None`` means 0, which is PosRF.
    """
    proj = x @ w.T
    if a is None:
        return torch.exp(proj - _half_sq_norm(x)) / math.sqrt(w.shape[0])
    b = _family_slope(a)
    log_scale = 0.25 * x.shape[-1] * torch.log(1 - 4 * a)
    logits = 2 * a * _half_sq_norm(w).T + b * proj - _half_sq_norm(x) + log_scale
    return torch.exp(logits) / math.sqrt(w.shape[0])


def _family_key(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """The log-feature shifted by the constant ``-b^2 |w_i|^2 / 2``: ``-|x - b w_i|^2 / 2 <= 0``.

    Every key feature lies in ``(0, 1]`` whatever the other tokens are. Keys far from every
    ``b w_i`` underflow towards 0, which the denominator guard absorbs. The family's ``a |w|^2``
    terms move to the query side.
    """
    b = _family_slope(a)
    if b is None:
        return torch.exp(x @ w.T - _half_sq_norm(x) - _half_sq_norm(w).T)
    return torch.exp(b * (x @ w.T) - _half_sq_norm(x) - b * b * _half_sq_norm(w).T)


def _family_query(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """The log-feature carries ``|w_i|^2 / 2``, then subtracts its maximum over features.

    ``|w_i|^2 / 2`` is the key side's ``-b^2 |w_i|^2 / 2`` plus the family's ``2a |w_i|^2``
    (``b^2 / 2 + 2a = 1/2`` for every ``a``). The largest query feature is then exactly 1. That
    shift cancels in the attention ratio, and so do the per-query ``|x|^2 / 2`` terms and the
    constant ``(1 - 4a)^(d/2)``, which are left out.
    """
    b = _family_slope(a)
    proj = x @ w.T if b is None else b * (x @ w.T)
    logits = proj + _half_sq_norm(w).T
    return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())


def _both_signs(w: torch.Tensor) -> torch.Tensor:
    """``(M, d) -> (2M, d)``: the hyperbolic map is the positive map over directions [w, -w]."""
    return torch.cat([w, -w], dim=0)


def _hyperbolic_textbook(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    proj = x @ w.T
    paired = torch.cat([proj, -proj], dim=-1)
    return torch.exp(paired - _half_sq_norm(x)) / math.sqrt(2 * w.shape[0])


def _hyperbolic_key(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    return _family_key(x, _both_signs(w), a)


def _hyperbolic_query(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    return _family_query(x, _both_signs(w), a)


def _sin_cos(proj: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def _trig_textbook(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    return torch.exp(_half_sq_norm(x)) * _sin_cos(x @ w.T) / math.sqrt(w.shape[0])


def _trig_key(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """The whole ``exp(|x|^2 / 2)`` sits on the key side, clamped; queries stay in [-1, 1]."""
    scale = torch.exp(torch.clamp(_half_sq_norm(x), max=TRIG_MAX_LOG_SCALE))
    return _sin_cos(x @ w.T) * scale


def _trig_query(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    return _sin_cos(x @ w.T)


def _relu_features(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """Defines its own kernel rather than estimating the softmax one: nothing to stabilize."""
    return torch.relu(x @ w.T) + RELU_EPS


def _exponential(name: str, **properties: bool) -> Kernel:
    """A member of the exponential family: the family's maps, told apart by how ``a`` is set."""
    return Kernel(name, _family_textbook, _family_query, _family_key, family=True, **properties)


KERNEL_REGISTRY: dict[str, Kernel] = {
    kernel.name: kernel
    for kernel in (
        _exponential("posrf"),  # a = 0
        Kernel("hyperbolic", _hyperbolic_textbook, _hyperbolic_query, _hyperbolic_key, paired=True),
        Kernel("trigrf", _trig_textbook, _trig_query, _trig_key, paired=True, signed=True),
        Kernel("relu", _relu_features, _relu_features, _relu_features),
        # OPRF and SADERF take ``a`` from the data (SADERF also rescales queries and keys per
        # coordinate), GERF trains it: see :mod:`favor.ops.calibration`.
        _exponential("oprf", parametric=True, data_dependent=True),
        _exponential("gerf", parametric=True),
        _exponential("saderf", parametric=True, data_dependent=True),
    )
}

KERNELS = tuple(KERNEL_REGISTRY)
# Kernels whose features are never negative, so the attention denominator is >= 0.
POSITIVE_KERNELS = tuple(name for name, k in KERNEL_REGISTRY.items() if not k.signed)
EXPONENTIAL_FAMILY = tuple(name for name, k in KERNEL_REGISTRY.items() if k.family)
PARAMETRIC_KERNELS = tuple(name for name, k in KERNEL_REGISTRY.items() if k.parametric)
DATA_DEPENDENT_KERNELS = tuple(name for name, k in KERNEL_REGISTRY.items() if k.data_dependent)


def get_kernel(name: str) -> Kernel:
    """The kernel registered as ``name``; ValueError naming the registered ones otherwise."""
    return KERNEL_REGISTRY[check_choice("kernel", name, tuple(KERNEL_REGISTRY))]


def feature_dim(kernel: str, nb_features: int) -> int:
    """Length ``M'`` of the feature vector: ``2M`` for the paired maps, else ``M``."""
    return get_kernel(kernel).feature_dim(nb_features)


def random_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Textbook, unbiased features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    ``a`` broadcasts against ``(..., 1)``. For ``relu`` the map defines its own kernel rather
    than estimating the softmax one.
    """
    return get_kernel(kernel).textbook(x, w, a)


def key_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention-side key features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    Each key's features depend on that key alone and are bounded (by 1 for the exponential
    maps), so causal prefix sums need no look-ahead and do not overflow.
    """
    return get_kernel(kernel).key(x, w, a)


def query_features(
    kernel: str, x: torch.Tensor, w: torch.Tensor, *, a: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention-side query features: ``x (..., d)``, ``w (M, d)`` -> ``(..., M')``.

    They carry what the key side leaves out, up to factors per query that cancel in the
    attention ratio; the exponential maps' largest feature is exactly 1.
    """
    return get_kernel(kernel).query(x, w, a)
