"""Serve the exported encoder through favor.runtime and compare its accuracy with PyTorch's.

    python samples/encoder/serve.py samples/encoder/build

Imports only numpy and favor.runtime: this is what an app ships.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from favor.runtime import Session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="directory written by train_and_export.py")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    session = Session(args.build)
    with np.load(args.build / "test_set.npz") as data:
        tokens, mask, labels = data["tokens"], data["mask"], data["labels"]
        torch_accuracy = float(data["torch_accuracy"])
    predictions = []
    start = time.perf_counter()
    for i in range(0, len(tokens), args.batch):
        # Trim each batch to its longest sequence: the graph takes any length.
        length = int((~mask[i : i + args.batch]).sum(1).max())
        out = session.run(
            tokens=tokens[i : i + args.batch, :length],
            key_padding_mask=mask[i : i + args.batch, :length],
        )
        predictions.append(out["logits"].argmax(-1))
    elapsed = time.perf_counter() - start
    ort_accuracy = float((np.concatenate(predictions) == labels).mean())
    print(f"{'backend':<22} {'test accuracy':>13}")
    print(f"{'PyTorch':<22} {torch_accuracy:>13.3f}")
    print(f"{'ONNX Runtime (' + session.device + ')':<22} {ort_accuracy:>13.3f}")
    print(f"{len(tokens)} sequences in {elapsed * 1e3:.0f} ms through favor.runtime")


if __name__ == "__main__":
    main()
