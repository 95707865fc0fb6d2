"""Export one causal FavorAttention layer to ONNX by hand and check it in ONNX Runtime.

This is the op level that ``favor-export`` builds on: a stateful attention graph with a dynamic
batch and sequence length, the projection stored as an initializer, and the recurrent state as a
plain input and output. Run it from the repository root:

    python samples/export_attention.py [--output DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from favor.ops import FavorAttention


class StatefulAttention(nn.Module):
    """``(q, k, v, state) -> (out, new_state)``: the state is an explicit graph input/output."""

    def __init__(self, attention: FavorAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, q, k, v, state):
        return self.attention(q, k, v, state=state, return_state=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="where to write attention.onnx")
    args = parser.parse_args()
    out_dir = args.output or Path(tempfile.mkdtemp(prefix="favor-sample-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    attention = FavorAttention(64, 128, causal=True, kernel="posrf", projection="orf")
    module = StatefulAttention(attention).eval()
    heads, dim = 8, 64
    example = [torch.randn(1, heads, 100, dim) * 0.5 for _ in range(3)]
    example.append(attention.initial_state(1, heads, dim))
    names = ["q", "k", "v", "state"]
    dynamic = {n: {0: "batch", 2: "seq"} for n in names[:3]} | {"state": {0: "batch"}}
    path = out_dir / "attention.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's exporter deprecation notices
        torch.onnx.export(
            module, tuple(example), str(path), dynamo=False, opset_version=17, input_names=names,
            output_names=["out", "new_state"], dynamic_axes=dynamic,
        )  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    print(f"{'length':>8} {'max |torch - ort|':>18} {'state size':>12}")
    state = attention.initial_state(1, heads, dim)
    for length in (1, 63, 65, 1000):
        q, k, v = (torch.randn(1, heads, length, dim) * 0.5 for _ in range(3))
        feeds = {"q": q, "k": k, "v": v, "state": state}
        got, got_state = session.run(None, {n: t.numpy() for n, t in feeds.items()})
        with torch.no_grad():
            want, state = module(q, k, v, state)
        error = float(np.abs(got - want.numpy()).max())
        print(f"{length:>8} {error:>18.2e} {tuple(got_state.shape)!s:>12}")
        if error > 1e-4 or not np.allclose(got_state, state.numpy(), rtol=1e-4, atol=1e-4):
            raise SystemExit(f"ONNX Runtime disagrees with PyTorch at length {length}")
    print("ONNX Runtime matches PyTorch; the state kept one size while the sequence grew.")


if __name__ == "__main__":
    main()
