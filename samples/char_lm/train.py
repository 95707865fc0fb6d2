"""Train a tiny character-level PerformerLM on the shipped corpus and save a favor checkpoint.

The corpus (``corpus.txt``, an original text written for this project) is about 50 KB, so the
whole run takes a few minutes on two CPU cores. The last 10% of the text is held out for
validation; the script reports both losses in nats per character next to the uniform baseline
``ln(V)`` and a unigram baseline, and keeps the weights from the evaluation with the lowest
validation loss. Run it from the repository root:

    python samples/char_lm/train.py [--steps N] [--out PATH] [--seed S] [--sample]
    python samples/char_lm/train.py --sample-only      # sample from an existing checkpoint

Besides the checkpoint it writes ``vocab.json`` next to it: a JSON list of characters whose
index is the token id.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from favor.exporter import load_model, save_checkpoint
from favor.ops.models import PerformerLM

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.txt"
DEFAULT_OUT = HERE / "char_lm.pt"
VOCAB_NAME = "vocab.json"
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the ones the shipped checkpoint was trained with."""

    steps: int = 600
    batch: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    eval_every: int = 100
    log_every: int = 50
    seed: int = 0


def model_kwargs(vocab_size: int, seed: int) -> dict:
    """PerformerLM arguments: small enough for a < 3 MB checkpoint and a CPU-minutes run."""
    return {
        "vocab_size": vocab_size,
        "dim": 128,
        "depth": 3,
        "heads": 4,
        "nb_features": 64,
        "chunk_size": 64,
        "seed": seed,  # seeds the fixed random-feature projections, one per layer
    }


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only results (the sample, the summary)."""
    print(message, file=sys.stderr, flush=True)


def build_vocab(text: str) -> list[str]:
    """Sorted distinct characters: stable across runs, so token ids never depend on hashing."""
    return sorted(set(text))


def write_vocab(vocab: list[str], path: Path) -> None:
    """Write ``vocab`` as JSON through a temporary file, so ``path`` is complete or untouched."""
    fd, tmp = tempfile.mkstemp(prefix=".vocab-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(vocab, handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the sidecar is a shipped file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_vocab(path: Path) -> list[str]:
    """The vocabulary written by :func:`write_vocab`."""
    return json.loads(path.read_text(encoding="utf-8"))


def encode(text: str, vocab: list[str]) -> torch.Tensor:
    """Characters -> int64 token ids."""
    index = {char: i for i, char in enumerate(vocab)}
    return torch.tensor([index[char] for char in text], dtype=torch.int64)


def split(ids: torch.Tensor, val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, ...]:
    """Train on the head, validate on the tail: a contiguous split, so no window leaks."""
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def unigram_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """Cross-entropy (nats/char) of train and val under the train character frequencies.

    Add-one smoothing keeps characters unseen in training from giving an infinite val loss.
    """
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_probs = (counts / counts.sum()).log()
    return float(-log_probs[train].mean()), float(-log_probs[val].mean())


def sample_batch(
    data: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs ``(batch, seq_len)`` and the same windows shifted by one."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, seq_len: int, batch: int = 32) -> float:
    """Mean nats/char over consecutive non-overlapping windows covering ``data``.

    Every character is scored exactly once; those early in a window see less context, which
    makes this slightly pessimistic, and the same for every model compared.
    """
    was_training = model.training
    model.eval()
    count = (len(data) - 1) // seq_len
    windows = data[: count * seq_len + 1]
    inputs = windows[:-1].view(count, seq_len)
    targets = windows[1:].reshape(count, seq_len)
    total = 0.0
    for i in range(0, count, batch):
        logits = model(inputs[i : i + batch]).flatten(0, 1)
        total += float(F.cross_entropy(logits, targets[i : i + batch].flatten(), reduction="sum"))
    model.train(was_training)
    return total / targets.numel()


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: decaying norms and biases only adds noise."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


def train(
    model: PerformerLM, train_ids: torch.Tensor, val_ids: torch.Tensor, config: TrainConfig
) -> tuple[dict, float, float]:
    """Train in place; return the best-validation state_dict, its val loss and the step it had.

    The corpus is small, so a model this size memorises it if trained long enough (at the
    defaults, a 1000-step run reaches its best validation loss near step 500, then rises);
    keeping the best evaluated weights is the early stopping that guards against that.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    best_state, best_val, best_step = copy.deepcopy(model.state_dict()), math.inf, 0
    start = time.perf_counter()
    model.train()
    for step in range(1, config.steps + 1):
        inputs, targets = sample_batch(train_ids, config.batch, config.seq_len, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # early steps can spike
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - start
        if step % config.log_every == 0 or step == 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  elapsed {elapsed:6.1f}s")
        if step % config.eval_every == 0 or step == config.steps:
            val_loss = evaluate(model, val_ids, config.seq_len)
            marker = ""
            if val_loss < best_val:
                best_state, best_val, best_step = copy.deepcopy(model.state_dict()), val_loss, step
                marker = "  (best)"
            log(f"step {step:5d}  val {val_loss:.3f}{marker}")
    return best_state, best_val, best_step


@torch.no_grad()
def generate(
    model: PerformerLM,
    vocab: list[str],
    prompt: str,
    length: int = 300,
    *,
    temperature: float = 0.6,
    context: int = TrainConfig.seq_len,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` by ``length`` characters, one token per call on the recurrent state.

    This is the decode path the exported graphs serve: a prefill, then one token and the state
    per step, at a constant cost per character. The model was trained on ``context``-character
    windows and never saw a longer history; fed one, it degrades fast (on the held-out text,
    about 1.8 nats/char over its first 256 characters, over 3 after them: worse than unigram).
    So when the state reaches ``context`` tokens, the last ``context // 2`` characters are
    prefilled again into a fresh state: a sliding window that keeps every history in the
    trained range. (Training with the state carried across windows instead stalled near
    2.3 nats/char at this size and budget.) ``temperature == 0`` picks the likeliest character.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    history = encode(prompt, vocab).tolist()
    logits, state = model(torch.tensor([history[-context:]]), return_state=True)
    for _ in range(length):
        last = logits[0, -1]
        if temperature <= 0:
            token = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        history.append(token)
        if int(state[0][0]) >= context:  # state[0] holds the tokens consumed so far
            window = torch.tensor([history[-(context // 2) :]])
            logits, state = model(window, return_state=True)
        else:
            logits, state = model(torch.tensor([[token]]), state, return_state=True)
    return "".join(vocab[token] for token in history)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint path")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for everything")
    parser.add_argument("--sample", action="store_true", help="print a sample after training")
    parser.add_argument(
        "--sample-only", action="store_true", help="skip training; sample from --out"
    )
    parser.add_argument("--prompt", default="The ", help="sampling prompt")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 means greedy")
    return parser.parse_args()


def print_sample(model: PerformerLM, vocab: list[str], args: argparse.Namespace) -> None:
    """Print a 300-character continuation of ``--prompt`` from the PyTorch model."""
    unknown = sorted(set(args.prompt) - set(vocab))
    if unknown:
        raise SystemExit(f"the prompt uses characters the corpus lacks: {''.join(unknown)!r}")
    text = generate(model, vocab, args.prompt, temperature=args.temperature, seed=args.seed)
    print(f"--- sample (temperature {args.temperature}, prompt {args.prompt!r}) ---")
    print(text)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)  # the sample is sized for, and timed on, two CPU cores
    torch.manual_seed(args.seed)
    vocab_path = args.out.parent / VOCAB_NAME
    if args.sample_only:
        model = load_model(args.out).module
        print_sample(model, read_vocab(vocab_path), args)
        return

    text = CORPUS.read_text(encoding="ascii")
    vocab = build_vocab(text)
    train_ids, val_ids = split(encode(text, vocab))
    config = TrainConfig(steps=args.steps, seed=args.seed)
    model = PerformerLM(**model_kwargs(len(vocab), args.seed))
    params = sum(p.numel() for p in model.parameters())
    log(
        f"corpus {len(text)} chars (train {len(train_ids)}, val {len(val_ids)}), vocab "
        f"{len(vocab)}, model {params / 1e3:.0f}k parameters, {config.steps} steps of "
        f"{config.batch}x{config.seq_len}"
    )

    start = time.perf_counter()
    best_state, best_val, best_step = train(model, train_ids, val_ids, config)
    wall = time.perf_counter() - start
    model.load_state_dict(best_state)
    train_loss = evaluate(model, train_ids, config.seq_len)
    uni_train, uni_val = unigram_loss(train_ids, val_ids, len(vocab))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.eval(), args.out)
    write_vocab(vocab, vocab_path)

    print(f"trained {config.steps} steps in {wall:.0f}s; kept step {best_step} (best val)")
    print(f"{'nats/char':>22} {'train':>7} {'val':>7}")
    print(f"{'uniform ln(V)':>22} {math.log(len(vocab)):7.3f} {math.log(len(vocab)):7.3f}")
    print(f"{'unigram':>22} {uni_train:7.3f} {uni_val:7.3f}")
    print(f"{'PerformerLM':>22} {train_loss:7.3f} {best_val:7.3f}")
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.2f} MB) and {vocab_path}")
    if args.sample:
        print_sample(model, vocab, args)


if __name__ == "__main__":
    main()
