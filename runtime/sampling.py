"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import numpy as np

from .checks import is_int


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming the first sampling parameter that is out of range."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and not is_int(top_k, at_least=1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def sample_token(
    logits: np.ndarray,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """One token id from ``logits (V,)``. ``temperature == 0`` is greedy (argmax).

    A temperature so small that ``logits / temperature`` overflows float64 (e.g. 1e-310) is
    greedy too: the distribution tends to the argmax as the temperature goes to 0, and top-k and
    top-p always keep the argmax. Logits holding NaN are a ValueError.
    """
    if np.isnan(logits).any():
        raise ValueError("logits hold NaN: the model's output is not a distribution")
    if temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):
        scores = logits.astype(np.float64) / temperature
    if not np.isfinite(scores.max()):
        return int(np.argmax(logits))
    if top_k is not None and top_k < scores.size:
        cutoff = np.partition(scores, -top_k)[-top_k]
        scores = np.where(scores < cutoff, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs))
