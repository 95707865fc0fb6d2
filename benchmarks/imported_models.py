"""The performer-pytorch models of :mod:`benchmarks.imported`, as their users would have them.

* a byte-level causal ``PerformerLM`` trained briefly on ``samples/char_lm/corpus.txt`` (the
  first 90% of its bytes; the last 10% are held out), cached as a pickled module so that later
  runs reuse it;
* an scBERT-shaped bidirectional ``PerformerLM`` (7 expression bins, 16906 genes + 1) with
  random weights: its speed and memory do not depend on what it learned.

Both are pickled whole (``torch.save(module)``), as performer-pytorch users save them; the
benchmark's child processes load them back the same way.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import LoadMeter
from benchmarks.paths import REPO_ROOT

CORPUS = REPO_ROOT / "samples" / "char_lm" / "corpus.txt"
HELD_OUT_SHARE = 0.1
CHAR_LM = {
    "num_tokens": 256, "dim": 128, "depth": 3, "heads": 4, "dim_head": 32, "nb_features": 64,
    "max_seq_len": 2048, "causal": True,
}  # fmt: skip
SCBERT = {
    "num_tokens": 7, "dim": 200, "depth": 6, "heads": 10, "max_seq_len": 16907, "causal": False,
}  # fmt: skip
# Training losses are averaged over this many steps in progress lines and the report.
LOSS_WINDOW = 20


@dataclass(frozen=True)
class Recipe:
    """How the causal LM is trained: Adam at ``lr`` on ``batch`` random windows of ``seq``
    bytes for ``steps`` steps, from ``seed``. The cache file is named after it, so a changed
    recipe trains a new model instead of reusing one trained otherwise."""

    steps: int
    batch: int
    seq: int
    lr: float = 1e-3
    seed: int = 0

    def cache_name(self) -> str:
        return (
            f"performer_char_lm-{self.steps}x{self.batch}x{self.seq}-lr{self.lr:g}-s{self.seed}.pt"
        )


def split_corpus(data: bytes, held_out: float = HELD_OUT_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Byte ids ``(T,)`` int64 cut into the first ``1 - held_out`` (training) and the rest."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be between 0 and 1, got {held_out}")
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    cut = round(len(ids) * (1 - held_out))
    return ids[:cut], ids[cut:]


def performer_lm(config: dict) -> nn.Module:
    """performer-pytorch's ``PerformerLM(**config)`` in eval mode.

    Its causal attention prints a notice on stdout when it falls back to its CPU code; stdout
    carries the benchmark's table (and a child's JSON result), so the notice goes to stderr.
    """
    from performer_pytorch import PerformerLM

    with contextlib.redirect_stdout(sys.stderr):
        return PerformerLM(**config).eval()


def train(
    model: nn.Module, ids: np.ndarray, recipe: Recipe, say: Callable[[str], None]
) -> list[float]:
    """Train ``model`` on windows of ``ids (T,)`` by next-token cross-entropy; each step's loss."""
    generator = torch.Generator().manual_seed(recipe.seed)
    data = torch.from_numpy(ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    model.train()
    losses = []
    for step in range(recipe.steps):
        starts = torch.randint(0, len(data) - recipe.seq - 1, (recipe.batch,), generator=generator)
        windows = torch.stack([data[s : s + recipe.seq + 1] for s in starts.tolist()])
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % LOSS_WINDOW == 0 or step + 1 == recipe.steps:
            say(f"step {step + 1}/{recipe.steps}: loss {mean_tail(losses):.3f} nats/byte")
    return losses


def mean_tail(values: list[float], count: int = LOSS_WINDOW) -> float:
    """Mean of the last ``count`` values (fewer where there are fewer)."""
    tail = values[-count:]
    return sum(tail) / len(tail)


def trained_char_lm(
    cache_dir: Path, recipe: Recipe, *, retrain: bool, say: Callable[[str], None]
) -> tuple[Path, dict]:
    """The pickled causal LM trained by ``recipe`` and what its training reported.

    Reuses the file in ``cache_dir`` unless ``retrain``; returns its path and
    ``{"recipe", "seconds", "other_load", "final_loss", "cached"}`` (``other_load``: cores
    other processes used meanwhile).
    """
    path = cache_dir / recipe.cache_name()
    if path.exists() and not retrain:
        say(f"reusing the trained LM {path} (--retrain trains it again)")
        return path, {**torch.load(path, weights_only=False)["training"], "cached": True}
    train_ids, _ = split_corpus(CORPUS.read_bytes())
    torch.manual_seed(recipe.seed)
    model = performer_lm(CHAR_LM)
    say(f"training the LM: {recipe.steps} steps x batch {recipe.batch} x {recipe.seq} bytes")
    started, meter = time.perf_counter(), LoadMeter()
    losses = train(model, train_ids, recipe, say)
    info = {
        "recipe": asdict(recipe),
        "seconds": time.perf_counter() - started,
        # On a shared machine the time says little without the load it was taken under.
        "other_load": meter.other_cores(),
        "final_loss": mean_tail(losses),
    }
    save_module(path, model, training=info)
    return path, {**info, "cached": False}


def random_scbert(path: Path, seed: int = 0) -> None:
    """A random-weight scBERT-shaped model, pickled to ``path``."""
    torch.manual_seed(seed)
    save_module(path, performer_lm(SCBERT), training=None)


def save_module(path: Path, model: nn.Module, *, training: dict | None) -> None:
    """``model`` pickled whole, in eval mode, beside what its ``training`` reported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.eval(), "training": training}, path)


def load_module(path: Path) -> nn.Module:
    """The module :func:`save_module` wrote, in eval mode (unpickling runs its classes' code:
    only for files this benchmark wrote)."""
    return torch.load(path, weights_only=False)["model"].eval()
