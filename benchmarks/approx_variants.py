"""The approximation benchmark's variants: one :class:`Variant` per row of its tables.

Every FAVOR kernel x projection pair of :mod:`favor.ops` is a variant, so a kernel or projection
added there is measured here without a change; LARA and the uniform baseline are the others.
Adding a variant is adding one object to :data:`VARIANTS`. Each is measured by
:func:`rel_rms_error` against exact softmax attention.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.approx_inputs import Inputs, Regime
from favor.ops import KERNELS, PROJECTIONS, FavorAttention, LaraAttention

LARA = "lara"
UNIFORM = "uniform"
LARA_MAX_PROPOSALS = 8
# Kernels that define their own attention rather than estimate softmax's.
NOT_SOFTMAX_KERNELS = ("relu",)


@dataclass(frozen=True)
class Variant:
    """One approximation of softmax attention.

    ``build(dim, features, seed, causal)`` returns the module, which maps ``q, k (B, H, N, D)``
    and ``v (B, H, N, Dv)`` to ``(B, H, N, Dv)``; it raises ValueError or NotImplementedError
    where the variant does not exist (``mm`` with ``M <= D``, causal LARA). ``ranked``: an
    estimator of softmax attention, eligible for the best variant, the summaries and the plot's
    lines. ``seeded``: measured once per projection seed (False: deterministic, measured once).
    """

    name: str
    label: str
    build: Callable[[int, int, int, bool], nn.Module]
    ranked: bool = True
    seeded: bool = True
    kernel: str | None = None
    projection: str | None = None


class UniformAttention(nn.Module):
    """Equal weights on every (causal: every earlier) key: the mean of the values, in float64.

    An estimator whose error is not clearly below this one's has no skill on those inputs.
    """

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        if not self.causal:
            return v.mean(dim=-2, keepdim=True).expand_as(v)
        counts = torch.arange(1, v.shape[-2] + 1, dtype=v.dtype, device=v.device).unsqueeze(-1)
        return v.cumsum(dim=-2) / counts


def build_favor(
    kernel: str, projection: str, dim: int, features: int, seed: int, causal: bool
) -> nn.Module:
    """``FavorAttention`` with one kernel and projection."""
    return FavorAttention(
        dim, features, kernel=kernel, projection=projection, seed=seed, causal=causal
    ).eval()


def build_lara(dim: int, features: int, seed: int, causal: bool) -> nn.Module:
    """LARA with up to :data:`LARA_MAX_PROPOSALS` segment-mean proposals."""
    proposals = min(LARA_MAX_PROPOSALS, features)
    return LaraAttention(dim, features, num_proposals=proposals, seed=seed, causal=causal).eval()


def build_uniform(dim: int, features: int, seed: int, causal: bool) -> nn.Module:
    """The no-skill baseline; it has neither features nor a seed."""
    return UniformAttention(causal)


def favor_variant(kernel: str, projection: str) -> Variant:
    """The ``kernel/projection`` variant; relu is marked † and not ranked."""
    name = f"{kernel}/{projection}"
    ranked = kernel not in NOT_SOFTMAX_KERNELS
    return Variant(
        name,
        name if ranked else f"{name} †",
        functools.partial(build_favor, kernel, projection),
        ranked=ranked,
        kernel=kernel,
        projection=projection,
    )


def registry(variants: Sequence[Variant]) -> dict[str, Variant]:
    """Variants by name, in table order; a name given twice would silently hide a row."""
    by_name = {variant.name: variant for variant in variants}
    if len(by_name) != len(variants):
        raise ValueError("two approximation variants share a name")
    return by_name


# Every kernel/projection pair in library order, then LARA and the uniform baseline.
VARIANTS = registry(
    [
        *(favor_variant(kernel, projection) for kernel in KERNELS for projection in PROJECTIONS),
        Variant(LARA, f"lara (C=min({LARA_MAX_PROPOSALS},M))", build_lara),
        Variant(UNIFORM, "uniform (mean of v) †", build_uniform, ranked=False, seeded=False),
    ]
)


def approximate(
    module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """One call; data-dependent kernels are calibrated on the same q, k where they need it."""
    if isinstance(module, FavorAttention) and (
        module.kernel == "gerf" or (module.causal and module.kernel in ("oprf", "saderf"))
    ):
        # GERF would start at PosRF; causal OPRF/SADERF read frozen statistics (all-zero: PosRF).
        module.calibrate_(q, k)
    return module(q, k, v)


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS of the difference over RMS of the expected value (as ``tests/helpers.py``)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def summarize(errors: list[float]) -> dict:
    """Mean, sample std, min and max over the finite errors, and how many were not finite."""
    finite = [e for e in errors if math.isfinite(e)]
    summary: dict = {"nonfinite": len(errors) - len(finite)}
    if finite:
        summary.update(
            mean=statistics.fmean(finite),
            std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
            min=min(finite),
            max=max(finite),
        )
    return summary


def error_status(error: Exception) -> dict:
    """A cell's status and reason when its module failed: the report goes on without it."""
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"[:200]}


def measure_cell(
    variant: Variant,
    regime: Regime,
    inputs: Inputs,
    exact: torch.Tensor,
    features: int,
    seeds: int,
) -> dict:
    """Errors of one variant at one ``M`` on one regime, for every seed; never raises."""
    cell: dict = {"variant": variant.name, "regime": regime.name, "nb_features": features}
    if variant.kernel is not None:
        cell["kernel"], cell["projection"] = variant.kernel, variant.projection
    errors: list[float] = []
    for seed in range(seeds if variant.seeded else 1):
        outputs = []
        for q, k, v in inputs.split():
            try:
                module = variant.build(q.shape[-1], features, seed, regime.causal)
            except (ValueError, NotImplementedError) as error:
                # The variant does not exist here (mm with M <= D, causal LARA): not a failure.
                cell.update(status="n/a", reason=" ".join(str(error).split())[:200])
                return cell
            except Exception as error:  # a report must survive any one variant's failure
                cell.update(error_status(error))
                return cell
            if isinstance(module, FavorAttention):
                cell["feature_dim"] = module.feature_dim
            try:
                with torch.no_grad():
                    outputs.append(approximate(module, q, k, v))
            except Exception as error:  # a report must survive any one variant's failure
                cell.update(error_status(error))
                return cell
        errors.append(rel_rms_error(torch.cat(outputs, dim=1), exact))
    cell.update(status="ok", errors=errors, **summarize(errors))
    return cell


def run_regime(regime: Regime, inputs: Inputs, features: Sequence[int], seeds: int) -> list[dict]:
    """Every variant at every ``M`` on one regime's inputs."""
    # The reference in float64, so its own rounding is far below any estimator's error.
    q, k, v = (x.double() for x in (inputs.q, inputs.k, inputs.v))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=regime.causal)
    return [
        measure_cell(variant, regime, inputs, exact, m, seeds)
        for variant in VARIANTS.values()
        for m in features
    ]
