"""The parity budget of quantized graphs: what they must meet instead of an elementwise tolerance.

An int8 graph cannot meet float32's ``1e-4`` elementwise: every quantized MatMul adds noise of
about half a quantization step, ``~0.4%`` of the range of its operands. What matters downstream
is whether predictions change, so a quantized graph is held, per output and per validation case,
to:

- ``rel_rms``: ``||got - want|| / ||want||`` over the whole output, for every float output
  (logits, hidden states, the carried attention state);
- ``kl``: the mean over positions of ``KL(softmax(want) || softmax(got))`` in nats, for outputs
  named ``logits``: how far the predicted distributions move;
- ``top1``: the fraction of positions whose argmax agrees, for ``logits``, counted only where
  PyTorch's top logit leads the runner-up by more than ``top1_margin``: a near-tie may flip
  under any noise without the model being wrong, and tiny random test models are full of them.

Integer outputs (``new_state.offsets``) must still match exactly. The figures the defaults are
chosen from are in README "Quantization" (``python -m benchmarks.quantize``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Outputs that are scores over classes or a vocabulary along their last axis.
LOGITS_OUTPUTS = ("logits",)


@dataclass(frozen=True)
class ParityBudget:
    """Per output and case: ``rel_rms`` (all float outputs), ``kl`` and ``top1`` (logits)."""

    rel_rms: float
    kl: float
    top1: float
    top1_margin: float

    def to_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """The budget in one line, for the validation table."""
        return (
            f"relative RMS error <= {self.rel_rms:g}; for logits mean KL <= {self.kl:g} nats "
            f"and top-1 agreement >= {self.top1:.0%} where PyTorch's top logit leads by > "
            f"{self.top1_margin:g}"
        )


# Chosen from measurements (README "Quantization"; int8 per-channel weights, 2-core AVX-512 VNNI
# CPU). Worst over the validation sweep: rel_rms 0.025 on logits (random test encoder), 0.039
# on a state output (sample char-LM, last layer); KL 7e-4 nats; top1 100% at positions with a
# margin over 0.5 (plain argmax agreement fell to 97% on near-ties). The limits leave 2.5x
# headroom in rel_rms (so about 6x in KL, which grows with its square), while a broken graph
# (a weight with the wrong sign or scale) lands near rel_rms 1 and fails by far.
INT8_BUDGET = ParityBudget(rel_rms=0.1, kl=0.01, top1=0.99, top1_margin=0.5)


@dataclass
class BudgetResult:
    """One output of one case against the budget."""

    max_abs: float
    max_rel: float
    passed: bool
    note: str
    metrics: dict[str, float]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logits_metrics(got: np.ndarray, want: np.ndarray, margin: float) -> dict[str, float]:
    """``kl`` (mean nats per position) and ``top1`` agreement of ``(..., classes)`` logits.

    ``top1`` counts only positions where ``want``'s top logit beats the runner-up by more than
    ``margin``; it is 1.0 when there are none.
    """
    log_p, log_q = _log_softmax(want), _log_softmax(got)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()) if want.size else 0.0
    top2 = np.sort(want, axis=-1)[..., -2:] if want.shape[-1] > 1 else np.zeros(want.shape[:-1])
    decisive = (top2[..., 1] - top2[..., 0] > margin) if want.shape[-1] > 1 else top2 == 0
    agree = want.argmax(axis=-1) == got.argmax(axis=-1)
    top1 = float(agree[decisive].mean()) if decisive.any() else 1.0
    return {"kl": max(kl, 0.0), "top1": top1, "top1_positions": int(decisive.sum())}


def first_nonfinite(got: np.ndarray, want: np.ndarray) -> str:
    """Where PyTorch's output ``want``, or else ``got``, first holds a NaN or inf; "" if nowhere.

    Both arrays have the same shape; the index is over all of it, e.g. ``(0, 3, 17)``.
    """
    for array, whose in ((want, "PyTorch's output"), (got, "the exported output")):
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            return f"non-finite {array[index]} in {whose} at index {index}"
    return ""


def check_budget(
    got: np.ndarray, want: np.ndarray, name: str, budget: ParityBudget
) -> BudgetResult:
    """Hold one float output to ``budget``; ``got`` from the quantized graph, ``want`` PyTorch's."""
    if got.shape != want.shape:
        note = f"(shape {got.shape} != {want.shape})"
        return BudgetResult(math.inf, math.inf, False, note, {})
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite values fail below, by name
        diff = np.nan_to_num(got64 - want64, nan=math.inf, posinf=math.inf, neginf=-math.inf)
        max_abs = float(np.abs(diff).max(initial=0.0))
        norm = float(np.linalg.norm(want64))
        error = float(np.linalg.norm(diff))
    scale = float(np.abs(want64).max(initial=0.0))
    metrics = {"rel_rms": error / norm if norm > 0 else error}
    nonfinite = first_nonfinite(got64, want64)
    if name in LOGITS_OUTPUTS and want.ndim >= 1 and not nonfinite:
        metrics |= logits_metrics(got64, want64, budget.top1_margin)
    misses = [
        f"{key} {metrics[key]:.3g} {'<' if key == 'top1' else '>'} {limit:.3g}"
        for key, limit in (("rel_rms", budget.rel_rms), ("kl", budget.kl), ("top1", budget.top1))
        if key in metrics
        and not (metrics[key] >= limit if key == "top1" else metrics[key] <= limit)
    ]
    if nonfinite:
        misses.append(nonfinite)
    summary = ", ".join(
        f"{key} {value:.2g}" if key != "top1" else f"top1 {value:.1%}"
        for key, value in metrics.items()
        if key != "top1_positions"
    )
    note = f"({'; '.join(misses)})" if misses else f"({summary})"
    return BudgetResult(
        max_abs, max_abs / scale if scale > 0 else max_abs, not misses, note, metrics
    )
