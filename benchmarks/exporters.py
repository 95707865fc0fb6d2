"""Compare torch's two ONNX exporters on a reference LM: export time, graph size, ORT speed.

    python -m benchmarks.exporters [--dim 256] [--depth 4] [--length 1024]

Prints a markdown table; the default ``--exporter`` of favor-export was chosen from it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from benchmarks.arguments import add_lm_arguments
from benchmarks.report import markdown_table
from benchmarks.timing import median_ms
from favor.exporter import export
from favor.ops.models import PerformerLM


def _feeds(session: ort.InferenceSession, lm: PerformerLM, length: int) -> dict[str, np.ndarray]:
    state = lm.initial_state(1)
    tokens = torch.randint(0, lm.config()["vocab_size"], (1, length))
    values = [tokens, *state]
    return {i.name: v.numpy() for i, v in zip(session.get_inputs(), values, strict=True)}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.exporters``: export with both exporters, time, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_lm_arguments(parser)
    parser.add_argument("--length", type=int, default=1024, help="prefill length")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    lm = PerformerLM(256, args.dim, args.depth, args.heads, nb_features=args.features).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in ("torchscript", "dynamo"):
            print(f"exporting with {exporter}...", file=sys.stderr)
            start = time.perf_counter()
            result = export(
                lm, Path(tmp) / exporter, exporter=exporter, formats="onnx", validate_outputs=False
            )
            export_s = time.perf_counter() - start
            graph = onnx.load(str(result.onnx_path))
            session = ort.InferenceSession(
                str(result.onnx_path), providers=["CPUExecutionProvider"]
            )
            prefill = _feeds(session, lm, args.length)
            decode = _feeds(session, lm, 1)
            rows.append(
                (
                    exporter,
                    export_s,
                    len(graph.graph.node),
                    median_ms(lambda s=session, f=prefill: s.run(None, f), args.repeats),
                    median_ms(lambda s=session, f=decode: s.run(None, f), args.repeats * 10),
                )
            )
    print(
        f"PerformerLM dim={args.dim} depth={args.depth} heads={args.heads} M={args.features}, "
        f"ORT {ort.__version__}, torch {torch.__version__}"
    )
    print()
    header = ["exporter", "export s", "graph nodes", f"prefill {args.length} ms", "decode step ms"]
    cells = [
        [name, f"{export_s:.1f}", str(nodes), f"{prefill_ms:.1f}", f"{decode_ms:.2f}"]
        for name, export_s, nodes, prefill_ms, decode_ms in rows
    ]
    print(markdown_table(header, cells))


if __name__ == "__main__":
    main()
