"""The approximation benchmark's inputs: one :class:`Regime` per family of ``q, k, v``.

Synthetic regimes draw Gaussian inputs at fixed norms; the char-LM regimes capture the sample
model's own ``q, k, v`` (the regimes are described in :mod:`benchmarks.approx`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.paths import REPO_ROOT
from favor.ops import FavorAttention

CHAR_LM_DIR = REPO_ROOT / "samples" / "char_lm"
# Synthetic inputs: B = 1, H heads of N tokens, head size D.
HEADS, LENGTH, DIM = 4, 256, 64
# The sample LM's training window and the share of the corpus it held out (as train.py).
CHAR_LM_LENGTH = 256
CHAR_LM_VAL_FRACTION = 0.1
DATA_SEED = 1234


@dataclass(frozen=True)
class Regime:
    """A family of inputs; synthetic when ``q_std`` is set, else captured from the char-LM."""

    name: str
    causal: bool
    description: str
    q_std: float | None = None
    k_std: float | None = None


REGIMES = {
    regime.name: regime
    for regime in (
        Regime(
            "small", False, f"Gaussian, q, k std 0.25, H={HEADS}, N={LENGTH}, D={DIM}", 0.25, 0.25
        ),
        Regime(
            "moderate", False, f"Gaussian, q, k std 0.5, H={HEADS}, N={LENGTH}, D={DIM}", 0.5, 0.5
        ),
        Regime(
            "skewed",
            False,
            f"Gaussian, q std 0.71, k std 0.35, H={HEADS}, N={LENGTH}, D={DIM}",
            0.5 * math.sqrt(2),
            0.5 / math.sqrt(2),
        ),
        Regime("char-lm", False, "sample char-LM q, k, v, 3 layers x 4 heads, N=256, D=32"),
        Regime("char-lm-causal", True, "the same, causal"),
    )
}
DEFAULT_REGIMES = ("small", "moderate", "char-lm", "char-lm-causal")


@dataclass(frozen=True)
class Inputs:
    """Float32 ``q, k (1, H, N, D)`` and ``v (1, H, N, Dv)`` of one regime.

    The heads come in ``groups`` equal runs that one module serves in the source model (the
    char-LM's layers). Each run gets its own module, so calibration pools statistics over one
    layer's heads, as it would in that model, not over every layer's.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    groups: int = 1

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(q, k, v)`` for each group of heads."""
        parts = (x.chunk(self.groups, dim=1) for x in (self.q, self.k, self.v))
        return list(zip(*parts, strict=True))


def synthetic_inputs(q_std: float, k_std: float) -> Inputs:
    """Gaussian ``q, k (1, H, N, D)`` with the given stds, and standard normal ``v``."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    shape = (1, HEADS, LENGTH, DIM)
    q = torch.randn(shape, generator=generator) * q_std
    k = torch.randn(shape, generator=generator) * k_std
    v = torch.randn(shape, generator=generator)
    return Inputs(q, k, v)


def char_lm_inputs() -> Inputs:
    """q, k, v of every attention layer of the sample LM on held-out text, stacked along heads."""
    # Imported here: the synthetic regimes need neither the exporter nor the checkpoint.
    from favor.exporter import load_model

    model = load_model(CHAR_LM_DIR / "char_lm.pt").module.eval()
    vocab = json.loads((CHAR_LM_DIR / "vocab.json").read_text(encoding="utf-8"))
    text = (CHAR_LM_DIR / "corpus.txt").read_text(encoding="utf-8")
    held_out = text[int(len(text) * (1 - CHAR_LM_VAL_FRACTION)) :][:CHAR_LM_LENGTH]
    index = {char: i for i, char in enumerate(vocab)}
    tokens = torch.tensor([[index[char] for char in held_out]], dtype=torch.int64)

    captured: list[tuple[torch.Tensor, ...]] = []

    def record(_module: nn.Module, args: tuple) -> None:
        # FavorAttention's positional arguments start q, k, v: after projections and rotary.
        captured.append(tuple(arg.detach().clone() for arg in args[:3]))

    layers = [m for m in model.modules() if isinstance(m, FavorAttention)]
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.inference_mode():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(layers):
        raise RuntimeError(f"captured {len(captured)} attention calls for {len(layers)} layers")
    q, k, v = (torch.cat(parts, dim=1) for parts in zip(*captured, strict=True))
    return Inputs(q, k, v, groups=len(layers))


def regime_inputs(regime: Regime, cache: dict[str, Inputs]) -> Inputs:
    """The regime's float32 inputs; the char-LM capture is shared by its two regimes."""
    if regime.q_std is not None and regime.k_std is not None:
        return synthetic_inputs(regime.q_std, regime.k_std)
    if "char-lm" not in cache:
        cache["char-lm"] = char_lm_inputs()
    return cache["char-lm"]


def input_stats(q: torch.Tensor, k: torch.Tensor) -> dict:
    """Mean ``|q|^2 / sqrt(D)`` and ``|k|^2 / sqrt(D)``: what makes positive features hard."""
    root_d = q.shape[-1] ** 0.5
    return {
        "shape": list(q.shape),
        "q_sq_norm_over_sqrt_d": (q.double().pow(2).sum(-1) / root_d).mean().item(),
        "k_sq_norm_over_sqrt_d": (k.double().pow(2).sum(-1) / root_d).mean().item(),
    }
