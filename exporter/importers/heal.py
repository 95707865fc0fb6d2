"""Healing a causal import: a short distillation from the original on the user's data.

A leak-free causal import differs from its original only where the original's eps terms read
the future (:mod:`.fidelity`). When that costs more than the targets allow, a few hundred steps
of distillation on CPU (the imported model learns the original's next-token distributions on
the calibration data) usually win it back. The original is not changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Adam's step size: small, since the imported model starts next to its target.
HEAL_LR = 1e-4
HEAL_BATCH = 4
HEAL_LENGTH = 256


def heal(
    original: nn.Module,
    imported: nn.Module,
    ids: np.ndarray,
    steps: int,
    *,
    max_length: int,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """A copy of ``imported`` trained ``steps`` steps to match ``original``'s next-token
    distributions (KL divergence, mean over positions) on windows of the token ids ``ids``.

    Both models take ``tokens (B, N)`` and return logits ``(B, N, V)``. Windows are
    ``min(max_length, 256)`` tokens, 4 per step, drawn with ``seed``. ``progress(step, kl)`` is
    called about ten times. Returns the healed copy in eval mode.
    """
    flat = torch.from_numpy(np.asarray(ids).reshape(-1).astype(np.int64))
    length = min(max_length, HEAL_LENGTH, len(flat))
    student = copy.deepcopy(imported).train()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=HEAL_LR)
    generator = torch.Generator().manual_seed(seed)
    original.eval()
    every = max(1, steps // 10)
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(flat) - length + 1, (HEAL_BATCH,), generator=generator)
        tokens = torch.stack([flat[s : s + length] for s in starts.tolist()])
        with torch.no_grad():
            target = F.log_softmax(original(tokens).float(), dim=-1)
        logits = F.log_softmax(student(tokens).float(), dim=-1)
        kl = F.kl_div(logits, target, log_target=True, reduction="none").sum(-1).mean()
        optimizer.zero_grad()
        kl.backward()
        optimizer.step()
        if progress is not None and (step % every == 0 or step == steps):
            progress(step, kl.item())
    return student.eval()
