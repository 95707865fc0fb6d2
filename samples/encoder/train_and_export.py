"""Train a small PerformerEncoder classifier, export it, and save the test set for serving.

    python samples/encoder/train_and_export.py [--out samples/encoder/build]

Writes ``encoder.pt`` (favor checkpoint), the validated export (``encoder.onnx``,
``encoder.torchscript.pt``, ``encoder.manifest.json``) and ``test_set.npz`` with PyTorch's own
test accuracy, for ``serve.py`` to compare against ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task import MARKERS, VOCAB, make_dataset

from favor.exporter import export, save_checkpoint
from favor.ops.models import PerformerEncoder


def accuracy(
    model: PerformerEncoder, tokens: np.ndarray, mask: np.ndarray, labels: np.ndarray
) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens), torch.from_numpy(mask))
    return float((logits.argmax(-1).numpy() == labels).mean())


def train(steps: int, seed: int) -> PerformerEncoder:
    torch.manual_seed(seed)
    model = PerformerEncoder(VOCAB, 64, 2, 4, num_classes=len(MARKERS), nb_features=32, seed=seed)
    tokens, mask, labels = (torch.from_numpy(a) for a in make_dataset(4096, seed=seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, tokens.shape[0], (64,))
        loss = F.cross_entropy(model(tokens[batch], mask[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - start:5.1f}s",
                file=sys.stderr,
            )
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "build")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = train(args.steps, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(model, args.out / "encoder.pt")
    result = export(
        checkpoint,
        args.out,
        opset=17,
        progress=lambda stage, msg: print(f"export: {stage:<9} {msg}", file=sys.stderr),
    )
    print(result.report.table(), file=sys.stderr)
    tokens, mask, labels = make_dataset(1000, seed=args.seed + 1)
    torch_accuracy = accuracy(model, tokens, mask, labels)
    np.savez(
        args.out / "test_set.npz",
        tokens=tokens,
        mask=mask,
        labels=labels,
        torch_accuracy=torch_accuracy,
    )
    print(
        f"PyTorch test accuracy {torch_accuracy:.3f}; now run: python samples/encoder/serve.py {args.out}"
    )


if __name__ == "__main__":
    main()
