"""``favor-run``: run, time, or generate with an exported model. numpy and onnxruntime only.

It uses argparse rather than click so that apps embedding the runtime need nothing else.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .generate import Generator
from .manifest import ManifestError
from .session import NUMPY_DTYPES, Session

EPILOG = """examples:
  favor-run run dist/ --inputs batch.npz --output out.npz
      run on inputs from an .npz (or --input NAME=file.npy); missing state inputs start at zero
  favor-run generate dist/ --vocab samples/char_lm/vocab.json --prompt "The " -n 200
      stream text from a character-level LM export
  favor-run bench dist/ --seq 1,64,1024 --context 16,4096
      time calls at given lengths, and decode steps after given context lengths

exit codes: 0 success, 2 bad input, 3 internal error
"""


def _parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _session_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export", type=Path, help="export directory, .onnx file, or manifest")
    parser.add_argument("--name", help="which export, when the directory holds several")
    parser.add_argument(
        "--providers", default="auto", help="auto, cpu, cuda, tensorrt, or a comma list [auto]"
    )
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads [its default]")


def _open(args: argparse.Namespace) -> Session:
    providers = args.providers if args.providers == "auto" else args.providers.split(",")
    return Session(args.export, providers=providers, threads=args.threads, name=args.name)


def _progress(quiet: bool) -> Callable[[str], None]:
    return (
        (lambda _m: None)
        if quiet
        else (lambda m: print(f"favor-run: {m}", file=sys.stderr, flush=True))
    )


def _table(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _load_inputs(args: argparse.Namespace, session: Session) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    if args.inputs is not None:
        try:
            with np.load(args.inputs) as archive:
                feeds.update({k: archive[k] for k in archive.files})
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read --inputs {args.inputs}: {error}") from None
    for item in args.input or []:
        name, sep, file = item.partition("=")
        if not sep:
            raise ValueError(f"--input {item!r} must be NAME=FILE.npy")
        try:
            feeds[name] = np.load(file)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read --input {name}: {error}") from None
    missing_state = [inp for inp, _ in session.state if inp not in feeds]
    if missing_state and feeds:
        batch = next(iter(feeds.values())).shape[0]
        zeros = session.initial_state(batch)
        feeds.update({name: zeros[name] for name in missing_state})
    return feeds


def command_run(args: argparse.Namespace) -> None:
    session = _open(args)
    outputs = session.run(_load_inputs(args, session))
    rows = [
        (
            name,
            "x".join(map(str, a.shape)),
            a.dtype,
            f"{a.min():.4g}",
            f"{a.max():.4g}",
            f"{a.astype(np.float64).mean():.4g}",
        )
        for name, a in outputs.items()
    ]
    print(_table(("output", "shape", "dtype", "min", "max", "mean"), rows))
    if args.output is not None:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}", file=sys.stderr)


def _random_inputs(
    session: Session, sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    feeds = {}
    state = {inp for inp, _ in session.state}
    ranges = {e["name"]: e.get("range") for e in session.manifest["inputs"]}
    for info in session.inputs:
        shape = tuple(sizes.get(d, 1) if isinstance(d, str) else d for d in info.shape)
        dtype = NUMPY_DTYPES[info.dtype]
        if info.name in state:
            feeds[info.name] = np.zeros(shape, dtype)
        elif dtype.kind in "iu":
            low, high = ranges.get(info.name) or (0, 2)
            feeds[info.name] = rng.integers(low, high, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[info.name] = np.zeros(shape, dtype)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _time(call: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def command_bench(args: argparse.Namespace) -> None:
    session = _open(args)
    say = _progress(args.quiet)
    rng = np.random.default_rng(0)
    seq_dim = session.manifest.get("sequence_dim") or "seq"
    rows = []
    for seq in args.seq:
        say(f"timing batch={args.batch} {seq_dim}={seq}")
        feeds = _random_inputs(session, {"batch": args.batch, seq_dim: seq}, rng)
        times = _time(lambda f=feeds: session.run(f), args.repeats, args.warmup)
        median = statistics.median(times)
        rows.append(
            (
                f"call {seq_dim}={seq}",
                args.batch,
                f"{median:.2f}",
                f"{max(times):.2f}",
                f"{args.batch * seq / median * 1e3:.0f}",
            )
        )
    if args.context and session.kind == "causal-lm":
        generator = Generator(session)
        for context in args.context:
            say(f"decode after a {context}-token context")
            tokens = rng.integers(0, generator.vocab_size, context)
            generator.reset()
            generator.prefill(tokens)
            last = int(tokens[-1])
            times = _time(lambda t=last: generator.step(t), args.repeats * 5, args.warmup)
            median = statistics.median(times)
            rows.append(
                (
                    f"decode after {context}",
                    1,
                    f"{median:.2f}",
                    f"{max(times):.2f}",
                    f"{1e3 / median:.0f}",
                )
            )
    print(_table(("what", "batch", "median ms", "max ms", "tokens/s"), rows))


def command_generate(args: argparse.Namespace) -> None:
    session = _open(args)
    try:
        vocab = json.loads(Path(args.vocab).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read --vocab {args.vocab}: {error}") from None
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in args.prompt if ch not in index})
    if unknown:
        raise ValueError(f"--prompt has characters outside the vocabulary: {''.join(unknown)!r}")
    generator = Generator(session)
    if len(vocab) != generator.vocab_size:
        raise ValueError(
            f"--vocab has {len(vocab)} entries but the model's vocabulary has {generator.vocab_size}"
        )
    sys.stdout.write(args.prompt)
    start, count = time.perf_counter(), 0
    for token in generator.stream(
        [index[ch] for ch in args.prompt], args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    ):  # fmt: skip
        sys.stdout.write(vocab[token])
        sys.stdout.flush()
        count += 1
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    if not args.quiet:
        print(
            f"favor-run: {count} tokens in {elapsed:.2f}s ({count / max(elapsed, 1e-9):.0f} tokens/s)",
            file=sys.stderr,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="favor-run", description="Run exported favor models on ONNX Runtime.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run once on inputs from .npz/.npy files")
    _session_args(run)
    run.add_argument("--inputs", type=Path, help=".npz with one array per input name")
    run.add_argument(
        "--input", action="append", metavar="NAME=FILE.npy", help="one input (repeatable)"
    )
    run.add_argument("--output", type=Path, help="write all outputs to this .npz")
    run.set_defaults(func=command_run)

    bench = sub.add_parser(
        "bench", help="time calls at given shapes and decode steps at given contexts"
    )
    _session_args(bench)
    bench.add_argument(
        "--seq", type=_parse_ints, default=[1, 64, 1024], help="lengths to time [1,64,1024]"
    )
    bench.add_argument("--batch", type=int, default=1, help="batch size [1]")
    bench.add_argument(
        "--context", type=_parse_ints, default=[], help="causal LMs: contexts to time decode after"
    )
    bench.add_argument("--repeats", type=int, default=10, help="timed calls per case [10]")
    bench.add_argument("--warmup", type=int, default=2, help="untimed calls first [2]")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    bench.set_defaults(func=command_bench)

    generate = sub.add_parser("generate", help="stream text from a character-level LM export")
    _session_args(generate)
    generate.add_argument(
        "--vocab", required=True, type=Path, help="JSON list of characters (token id = index)"
    )
    generate.add_argument("--prompt", default="The ", help='text to start from ["The "]')
    generate.add_argument(
        "-n", "--max-new-tokens", type=int, default=200, help="tokens to generate [200]"
    )
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy [0]")
    generate.add_argument("--top-k", type=int, help="sample from the k likeliest tokens")
    generate.add_argument("--top-p", type=float, help="sample from the smallest set with this mass")
    generate.add_argument("--seed", type=int, help="makes sampling reproducible")
    generate.add_argument("-q", "--quiet", action="store_true", help="no timing line")
    generate.set_defaults(func=command_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, ManifestError) as error:
        if args.debug:
            raise
        print(f"favor-run: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # last line of defence: no raw traceback without --debug
        if args.debug:
            raise
        print(
            f"favor-run: internal error: {type(error).__name__}: {error} (run with --debug)",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
