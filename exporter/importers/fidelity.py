"""How close an imported model is to the foreign original, measured on the same inputs.

Bidirectional layers are reproduced exactly, so their outputs must agree to rounding
(:data:`EXACT_RTOL`). Causal layers cannot be: the originals' eps terms sit relative to a
maximum over the whole sequence, future included, which a leak-free model never sees. For
them the report gives what a user decides by: the logits' largest difference, how often both
models pick the same next token, and both models' next-token NLL on the user's data, held to
:data:`CAUSAL_TARGETS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

# Largest |imported - original| relative to the largest |original| for exact reproductions.
EXACT_RTOL = 1e-5
# A causal import is faithful when its NLL is within 1% of the original's and it picks the
# original's top-1 token at >= 95% of positions.
CAUSAL_TARGETS = {"nll_ratio": 0.01, "top1": 0.95}


@dataclass
class Fidelity:
    """One comparison of original and imported outputs."""

    inputs: str  # what they were measured on, e.g. "calibration data: 4 x 128 tokens"
    max_abs: float
    max_rel: float
    top1: float | None = None  # share of positions where both argmax agree (logits only)
    nll_original: float | None = None  # next-token NLL in nats (causal LMs on real data)
    nll_imported: float | None = None

    @property
    def nll_change(self) -> float | None:
        """``(imported - original) / original`` NLL, None without NLLs."""
        if self.nll_original is None or self.nll_imported is None:
            return None
        return (self.nll_imported - self.nll_original) / self.nll_original


@dataclass
class FidelityReport:
    """The fidelity of one import: ``exact`` imports are held to :data:`EXACT_RTOL`, causal ones
    to :data:`CAUSAL_TARGETS` where NLL was measured."""

    original: str
    imported: str
    exact: bool
    measurements: list[Fidelity] = field(default_factory=list)
    # After healing (.heal): the steps taken and the report from before them.
    heal_steps: int = 0
    before_healing: FidelityReport | None = None
    # The calibration data's sha256 and token count, where the import was tuned on it.
    calibration: dict | None = None

    @property
    def misses(self) -> list[str]:
        """Each target missed, as a phrase; empty when every target is met."""
        missed = []
        for m in self.measurements:
            if self.exact and not m.max_rel <= EXACT_RTOL:
                missed.append(f"relative error {m.max_rel:.2g} > {EXACT_RTOL:g} on {m.inputs}")
            change = m.nll_change
            if not self.exact and change is not None and change > CAUSAL_TARGETS["nll_ratio"]:
                missed.append(f"NLL {change:+.1%} against the original on {m.inputs}")
            if not self.exact and m.nll_original is not None and m.top1 < CAUSAL_TARGETS["top1"]:
                missed.append(f"top-1 agreement {m.top1:.1%} on {m.inputs}")
        return missed

    def table(self) -> str:
        """The measurements, one row each; after healing, the rows from before it first."""
        lines = [f"{self.original} -> {self.imported}"]
        if self.before_healing is not None:
            lines += ["before healing:", *self.before_healing._rows()]
            lines.append(f"after healing {self.heal_steps} steps:")
        return "\n".join([*lines, *self._rows()])

    def _rows(self) -> list[str]:
        header = (
            f"{'inputs':<40} {'max abs':>10} {'max rel':>10} {'top-1':>7} "
            f"{'NLL orig':>9} {'NLL new':>9}"
        )
        return [header, "-" * len(header)] + [
            f"{m.inputs:<40} {m.max_abs:>10.2e} {m.max_rel:>10.2e} {_cell(m.top1, '.1%'):>7} "
            f"{_cell(m.nll_original, '.4f'):>9} {_cell(m.nll_imported, '.4f'):>9}"
            for m in self.measurements
        ]

    def summary(self) -> str:
        """One progress line."""
        worst = max(self.measurements, key=lambda m: m.max_rel)
        text = f"max rel {worst.max_rel:.1e}"
        if worst.top1 is not None:
            text += f", top-1 agreement {min(m.top1 for m in self.measurements):.1%}"
        nll = [m for m in self.measurements if m.nll_change is not None]
        if nll:
            text += ", NLL " + ", ".join(f"{m.nll_change:+.2%}" for m in nll)
        return text

    def to_json(self) -> dict:
        def clean(value: float | None) -> float | str | None:
            return value if value is None or math.isfinite(value) else str(value)

        return (
            {
                "original": self.original,
                "imported": self.imported,
                "exact": self.exact,
                "targets": {"max_rel": EXACT_RTOL} if self.exact else dict(CAUSAL_TARGETS),
                "misses": self.misses,
                "measurements": [
                    {key: clean(getattr(m, key)) for key in _FIELDS} | {"inputs": m.inputs}
                    for m in self.measurements
                ],
            }
            | ({} if self.calibration is None else {"calibration": self.calibration})
            | (
                {}
                if self.before_healing is None
                else {
                    "healed": {
                        "steps": self.heal_steps,
                        "before": self.before_healing.to_json()["measurements"],
                    }
                }
            )
        )


_FIELDS = ("max_abs", "max_rel", "top1", "nll_original", "nll_imported")


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def measure(
    original: nn.Module,
    imported: nn.Module,
    inputs: Sequence[torch.Tensor],
    label: str,
    *,
    logits: bool,
    next_token_targets: torch.Tensor | None = None,
    call: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor] | None = None,
) -> Fidelity:
    """Run both models on ``inputs``; compare their outputs ``(..., V)``.

    ``logits`` adds top-1 agreement over the last axis; ``next_token_targets (B, N - 1)`` adds
    each model's mean NLL of predicting them from the logits of positions ``0 .. N - 2``.
    ``call(model, inputs)`` runs a model (default ``model(*inputs)``).
    """
    run = call or (lambda model, args: model(*args))
    with torch.no_grad():
        want = run(original, inputs).double()
        got = run(imported, inputs).double()
    diff = (got - want).abs()
    max_abs = float(torch.nan_to_num(diff, nan=math.inf).max())
    scale = float(want.abs().max())
    result = Fidelity(label, max_abs, max_abs / scale if scale > 0 else max_abs)
    if logits:
        result.top1 = float((got.argmax(-1) == want.argmax(-1)).double().mean())
    if next_token_targets is not None:
        result.nll_original = _nll(want[:, :-1], next_token_targets)
        result.nll_imported = _nll(got[:, :-1], next_token_targets)
    return result


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    )


def token_rows(ids: np.ndarray, length: int, max_rows: int) -> torch.Tensor:
    """Calibration ids ``(T,)`` or ``(R, T)`` cut into at most ``max_rows`` rows of ``length``."""
    flat = np.asarray(ids).reshape(-1)
    rows = min(max_rows, len(flat) // length)
    return torch.from_numpy(flat[: rows * length].astype(np.int64).reshape(rows, length))
