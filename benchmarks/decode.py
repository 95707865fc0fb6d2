"""Per-token decode latency against context length: FAVOR state vs a softmax KV cache.

    python -m benchmarks.decode [--contexts 16,256,1024,4096,8192] [--dim 256 --depth 4]

Both models have the same shape (pre-norm blocks, rotary positions, same widths) and are exported
the same way (torch's dynamo exporter, opset 17) and run in ONNX Runtime on the CPU:

* ``favor``: :class:`PerformerLM` through favor-export's stateful graph and ``favor.runtime``'s
  Generator: the state is a constant ``(B, H, M, D + 1)`` per layer;
* ``softmax``: the same LM with exact attention and a key/value cache that grows by one row
  per token, fed back through the graph each step.

For each context length the prompt is prefilled once, then decode steps are timed. Prints a
table and writes ``decode.md``, ``decode.json`` and ``decode.png`` to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.arguments import add_lm_arguments, add_sizes_options
from benchmarks.machine import machine_info
from benchmarks.paths import RESULTS_DIR
from benchmarks.report import (
    log_axes,
    markdown_table,
    pyplot,
    save_figure,
    say_written,
    write_json,
)
from benchmarks.timing import interleaved_median_ms
from favor.exporter import export
from favor.ops.models import PerformerLM
from favor.ops.rotary import RotaryEmbedding
from favor.runtime import Generator, Session

VOCAB = 256


class SoftmaxBlock(nn.Module):
    """A pre-norm block with exact causal attention over a key/value cache."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.attn_norm, self.ff_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, positions, past_k, past_v):
        batch, length, _ = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .reshape(batch, length, 3, self.heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        # Query i (at absolute position past + i) sees keys 0 .. past + i.
        past = past_k.shape[2]
        allowed = torch.arange(k.shape[2]).unsqueeze(0) <= (past + torch.arange(length)).unsqueeze(
            1
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, -1))
        return x + self.ff(self.ff_norm(x)), k, v


class SoftmaxLM(nn.Module):
    """``(tokens, offsets, k_0, v_0, ...) -> (logits, offsets + L, k_0', v_0', ...)``."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(SoftmaxBlock(dim, heads) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, VOCAB)

    def forward(self, tokens, offsets, *cache):
        positions = offsets.unsqueeze(1) + torch.arange(tokens.shape[1])
        x, new_cache = self.embed(tokens), []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, positions, cache[2 * i], cache[2 * i + 1])
            new_cache += [k, v]
        return (self.head(self.norm(x)), offsets + tokens.shape[1], *new_cache)


def export_softmax(model: SoftmaxLM, heads: int, head_dim: int, path: Path) -> None:
    depth = len(model.blocks)
    cache = [torch.zeros(1, heads, 7, head_dim) for _ in range(2 * depth)]
    example = (torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, dtype=torch.long), *cache)
    dyn = torch.export.Dim.DYNAMIC
    shapes = ({0: dyn, 1: dyn}, {0: dyn}, tuple({0: dyn, 2: dyn} for _ in cache))
    names = ["tokens", "offsets"] + [f"{kind}.{i}" for i in range(depth) for kind in ("k", "v")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            example,
            dynamo=True,
            opset_version=17,
            input_names=names,
            dynamic_shapes=shapes,
            verbose=False,
        )
    program.save(str(path))


def softmax_step(
    session: ort.InferenceSession, depth: int, heads: int, head_dim: int, context: int
) -> Callable[[], object]:
    """One softmax decode step after a prefilled ``context``; the cache is not advanced, so
    every timed call sees the same context length."""
    rng = np.random.default_rng(0)
    empty = [np.zeros((1, heads, 0, head_dim), np.float32) for _ in range(2 * depth)]
    feeds = {"tokens": rng.integers(0, VOCAB, (1, context)), "offsets": np.zeros(1, np.int64)}
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, [*feeds.values(), *empty], strict=True)))
    step_inputs = [np.array([[1]]), outputs[1], *outputs[2:]]
    step = dict(zip(names, step_inputs, strict=True))
    return lambda: session.run(None, step)


def favor_step(session: Session, context: int) -> Callable[[], object]:
    """One FAVOR decode step after a prefilled ``context``. Steps advance the context by one
    token each: negligible next to the context itself."""
    generator = Generator(session)
    generator.prefill(np.random.default_rng(0).integers(0, VOCAB, context))
    return lambda: generator.step(1)


DEFAULT_CONTEXTS = (16, 256, 1024, 4096, 8192)
QUICK_CONTEXTS = (16, 1024)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``python -m benchmarks`` builds its own argv for these."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode", description=__doc__.splitlines()[0]
    )
    add_sizes_options(
        parser,
        "--contexts",
        DEFAULT_CONTEXTS,
        QUICK_CONTEXTS,
        "context lengths",
        "; the first is the baseline",
    )
    add_lm_arguments(parser)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--threads", type=int, default=1, help="ORT intra-op threads (1 is steadier)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.contexts = QUICK_CONTEXTS
    return args


def run(args: argparse.Namespace) -> dict:
    """Export both LMs, time a decode step at each context, and write decode.md, .json, .png.

    Prints the table and returns the JSON report (``benchmarks.targets`` reads its records).
    """
    started = time.perf_counter()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    head_dim = args.dim // args.heads
    with tempfile.TemporaryDirectory() as tmp:
        print("exporting the FAVOR LM...", file=sys.stderr, flush=True)
        favor_lm = PerformerLM(VOCAB, args.dim, args.depth, args.heads, nb_features=args.features)
        export(favor_lm, Path(tmp) / "favor", name="lm", formats="onnx", validate_outputs=False)
        print("exporting the softmax LM...", file=sys.stderr, flush=True)
        softmax_path = Path(tmp) / "softmax.onnx"
        export_softmax(
            SoftmaxLM(args.dim, args.depth, args.heads), args.heads, head_dim, softmax_path
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        softmax = ort.InferenceSession(
            str(softmax_path), options, providers=["CPUExecutionProvider"]
        )
        favor = Session(Path(tmp) / "favor", threads=args.threads)
        calls = {}
        for context in args.contexts:
            print(f"prefilling {context} tokens", file=sys.stderr, flush=True)
            calls["favor", context] = favor_step(favor, context)
            calls["softmax", context] = softmax_step(
                softmax, args.depth, args.heads, head_dim, context
            )
        print(
            f"timing {len(calls)} decode steps in alternating bursts, {args.repeats} calls each",
            file=sys.stderr,
            flush=True,
        )
        times = interleaved_median_ms(calls, args.repeats)
        records = [
            {
                "context": context,
                "favor_ms": times["favor", context],
                "softmax_ms": times["softmax", context],
            }
            for context in args.contexts
        ]
    table = render_table(args, records)
    print(table)
    report = {
        "machine": machine_info(),
        "config": {
            key: getattr(args, key)
            for key in ("dim", "depth", "heads", "features", "repeats", "threads")
        },
        "results": records,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "decode.md").write_text(table + "\n")
    write_json(args.out_dir / "decode.json", report)
    plot(records, args.out_dir / "decode.png")
    say_written(
        ["decode.md", "decode.json", "decode.png"], args.out_dir, time.perf_counter() - started
    )
    return report


def render_table(args: argparse.Namespace, records: list[dict]) -> str:
    """Markdown table of per-token latency; ratios are against the first context."""
    base = records[0]
    header = [
        "context",
        "favor ms",
        f"favor vs {base['context']}",
        "softmax+KV ms",
        f"softmax vs {base['context']}",
        "softmax / favor",
    ]
    rows = [
        [
            str(r["context"]),
            f"{r['favor_ms']:.2f}",
            f"{r['favor_ms'] / base['favor_ms']:.2f}x",
            f"{r['softmax_ms']:.2f}",
            f"{r['softmax_ms'] / base['softmax_ms']:.2f}x",
            f"{r['softmax_ms'] / r['favor_ms']:.2f}x",
        ]
        for r in records
    ]
    title = (
        f"Decode step latency, LM dim={args.dim} depth={args.depth} heads={args.heads} "
        f"M={args.features}, ONNX Runtime {ort.__version__} CPU, {args.threads} thread(s)"
    )
    return f"{title}\n\n{markdown_table(header, rows)}"


def plot(records: list[dict], path: Path) -> None:
    """Decode step latency against context, log-log, FAVOR and softmax."""
    contexts = [r["context"] for r in records]
    figure, axis = pyplot().subplots(figsize=(6, 4))
    axis.plot(contexts, [r["favor_ms"] for r in records], "o-", label="FAVOR, constant state")
    axis.plot(contexts, [r["softmax_ms"] for r in records], "s-", label="softmax, KV cache")
    log_axes(axis, xlabel="context length (tokens)", ylabel="decode step (ms)", x_base=10)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.decode``: run with command-line options."""
    run(parse_args(argv))


if __name__ == "__main__":
    main()
