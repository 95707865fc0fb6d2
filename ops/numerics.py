"""Dtype and division rules every attention module shares.

Features and sums run in a wider dtype than half-precision inputs, the values carry a ones column
so that one contraction yields numerator and denominator, and the division guards the
denominator before the result is cast back to the input's dtype.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Features and sums run in float32 for half inputs: exp() and long sums need its range."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def append_ones(v: torch.Tensor) -> torch.Tensor:
    """``(..., Dv) -> (..., Dv + 1)``: the ones column makes the denominator ride along."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def saturate_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast, clamping to ``dtype``'s finite range: an fp16 result saturates instead of becoming inf.

    Only signed estimates (TrigRF, sparse-grid weights) get there, when the denominator lands
    near zero.
    """
    if dtype == x.dtype:
        return x
    info = torch.finfo(dtype)
    return x.clamp(min=info.min, max=info.max).to(dtype)


def divide(out: torch.Tensor, *, signed_floor: float | None) -> torch.Tensor:
    """Split ``(..., Dv + 1)`` into numerator and denominator and divide, guarding the latter.

    ``signed_floor=None`` is for positive estimates, whose denominator only needs to avoid
    ``0 / 0``; a signed one keeps its sign and stays at least ``signed_floor`` in magnitude.
    """
    numerator, denominator = out[..., :-1], out[..., -1:]
    if signed_floor is None:
        denominator = denominator.clamp(min=torch.finfo(denominator.dtype).tiny)
    else:
        denominator = torch.where(
            denominator < 0,
            denominator.clamp(max=-signed_floor),
            denominator.clamp(min=signed_floor),
        )
    return numerator / denominator
