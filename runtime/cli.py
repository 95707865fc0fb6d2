"""``favor-run``: run, time, or generate with an exported model. numpy and onnxruntime only.

It uses argparse rather than click so that apps embedding the runtime need nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from .atomic import atomic_file
from .contract import ManifestError, ModelKind
from .dtypes import numpy_dtype
from .generate import DEFAULT_PREFILL_CHUNK, Generator
from .sampling import check_sampling
from .session import MODEL_FILES, Session, layout
from .text import Characters, Text, TextStream

EPILOG = """examples:
  favor-run run dist/ --inputs batch.npz --output out.npz
      run on inputs from an .npz (or --input NAME=file.npy); missing state inputs start at zero
  favor-run generate dist/ --prompt "The " -n 200
      stream text from a causal LM export that carries its vocabulary (favor-export --text);
      --vocab FILE.json gives a character vocabulary to one that does not
  favor-run bench dist/ --seq 1,64,1024 --context 16,4096
      time calls at given lengths, and decode steps after given context lengths

--json prints the result, or {"ok": false, "exit_code": N, "error": "..."}, as JSON on stdout.
exit codes: 0 success, 2 bad input, 3 internal error, 130 interrupted
"""
BAD_INPUT, INTERNAL_ERROR, INTERRUPTED = 2, 3, 130


class UsageError(ValueError):
    """A command line argparse cannot read: exit code 2, like any other bad input."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage and exits itself; raising lets main() report the error in one
    # line (or as JSON) like every other bad input.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


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
    parser.add_argument(
        "--threads", type=_int_at_least(1), help="ONNX Runtime intra-op threads [its default]"
    )
    parser.add_argument(
        "--model", choices=list(MODEL_FILES),
        help="which file to load: the .onnx graph or the .ort model [onnx, else ort]",
    )  # fmt: skip


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """``--debug`` and ``--json``, before or after the command name.

    The subcommands' defaults are SUPPRESS so that they do not overwrite a flag given before
    the command name.
    """
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks for errors"
    )
    parser.add_argument(
        "--json", dest="as_json", action="store_true", default=default,
        help="print the result, or the error and exit code, as JSON on stdout",
    )  # fmt: skip


def _open(args: argparse.Namespace) -> Session:
    providers = args.providers if args.providers == "auto" else args.providers.split(",")
    return Session(
        args.export, providers=providers, threads=args.threads, name=args.name, model=args.model
    )


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


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2))


# What np.load raises for a file that is not a readable .npy/.npz (pickles are refused).
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_array(file: str, flag: str) -> np.ndarray:
    """The array in ``.npy`` ``file``; ValueError naming ``flag`` if it holds none."""
    try:
        loaded = np.load(file)
    except _UNREADABLE as error:
        raise ValueError(f"cannot read {flag}: {error}") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise ValueError(f"{flag}: {file} is not a .npy array")
    return loaded


def _read_archive(file: Path) -> dict[str, np.ndarray]:
    """Every array in ``.npz`` ``file``, by name; ValueError if it is not a readable one."""
    try:
        loaded = np.load(file)
        if not isinstance(loaded, np.ndarray):
            with loaded as archive:
                return {k: archive[k] for k in archive.files}
    except _UNREADABLE as error:
        raise ValueError(f"cannot read --inputs {file}: {error}") from None
    raise ValueError(f"--inputs {file} is not an .npz archive (give a .npy with --input)")


def _load_inputs(args: argparse.Namespace, session: Session) -> dict[str, np.ndarray]:
    """Arrays from ``--inputs`` and ``--input`` by name; state inputs not given start at zero."""
    feeds: dict[str, np.ndarray] = {}
    origins: dict[str, str] = {}
    if args.inputs is not None:
        for name, array in _read_archive(args.inputs).items():
            feeds[name], origins[name] = array, f"--inputs {args.inputs}: {name}"
    for item in args.input or []:
        name, sep, file = item.partition("=")
        if not sep:
            raise ValueError(f"--input {item!r} must be NAME=FILE.npy")
        feeds[name] = _read_array(file, f"--input {name}")
        origins[name] = f"--input {name}: {file}"
    shapes = {t.name: t.shape for t in session.inputs}
    for name, array in feeds.items():
        if array.ndim == 0:
            want = f"; input {name!r} has shape {layout(shapes[name])}" if name in shapes else ""
            raise ValueError(f"{origins[name]} holds a scalar{want}")
    missing_state = [inp for inp, _ in session.state if inp not in feeds]
    if missing_state and feeds:
        batch = next(iter(feeds.values())).shape[0]
        zeros = session.initial_state(batch)
        feeds.update({name: zeros[name] for name in missing_state})
    return feeds


def _check_output(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written (``_write_npz`` still checks)."""
    if path.is_dir() and not path.is_symlink():
        raise ValueError(f"cannot write --output {path}: it is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write --output {path}: {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write --output {path}: {path.parent} is not writable")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` to exactly ``path`` (no suffix added), atomically."""
    try:
        with atomic_file(path) as out:
            np.savez(out, **arrays)
    except OSError as error:
        raise ValueError(f"cannot write --output {path}: {error.strerror or error}") from None


def _summary(array: np.ndarray) -> tuple[float | None, ...]:
    """min, max and mean of ``array`` (None for an empty one)."""
    if array.size == 0:
        return None, None, None
    return float(array.min()), float(array.max()), float(array.astype(np.float64).mean())


def command_run(args: argparse.Namespace) -> None:
    if args.output is not None:
        _check_output(args.output)
    session = _open(args)
    outputs = session.run(_load_inputs(args, session))
    if args.output is not None:
        _write_npz(args.output, outputs)
    summary = [(name, list(a.shape), str(a.dtype), *_summary(a)) for name, a in outputs.items()]
    if args.as_json:
        keys = ("name", "shape", "dtype", "min", "max", "mean")
        output_file = None if args.output is None else str(args.output)
        _print_json(
            {"ok": True, "outputs": [dict(zip(keys, row, strict=True)) for row in summary],
             "output_file": output_file}
        )  # fmt: skip
        return
    rows = [
        (name, "x".join(map(str, shape)), dtype, *(_number(v, ".4g") for v in stats))
        for name, shape, dtype, *stats in summary
    ]
    print(_table(("output", "shape", "dtype", "min", "max", "mean"), rows))
    if args.output is not None:
        print(f"wrote {args.output}", file=sys.stderr)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _random_inputs(
    session: Session, sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    feeds = {}
    state = {inp for inp, _ in session.state}
    for info in session.inputs:
        shape = tuple(sizes.get(d, 1) if isinstance(d, str) else d for d in info.shape)
        dtype = numpy_dtype(info.dtype)
        if info.name in state:
            feeds[info.name] = np.zeros(shape, dtype)
        elif dtype.kind in "iu":
            low, high = info.range or (0, 2)
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


def _timing_row(what: str, batch: int, times: list[float], tokens: int) -> dict:
    median = statistics.median(times)
    return {
        "what": what,
        "batch": batch,
        "median_ms": median,
        "max_ms": max(times),
        "tokens_per_s": tokens / median * 1e3,
    }


def command_bench(args: argparse.Namespace) -> None:
    session = _open(args)
    say = _progress(args.quiet or args.as_json)
    rng = np.random.default_rng(0)
    seq_dim = session.manifest.sequence_dim or "seq"
    rows = []
    for seq in args.seq:
        say(f"timing batch={args.batch} {seq_dim}={seq}")
        feeds = _random_inputs(session, {"batch": args.batch, seq_dim: seq}, rng)
        times = _time(lambda f=feeds: session.run(f), args.repeats, args.warmup)
        rows.append(_timing_row(f"call {seq_dim}={seq}", args.batch, times, args.batch * seq))
    if args.context and session.kind is ModelKind.CAUSAL_LM:
        generator = Generator(session)
        for context in args.context:
            say(f"decode after a {context}-token context")
            tokens = rng.integers(0, generator.vocab_size, context)
            generator.reset()
            generator.prefill(tokens)
            last = int(tokens[-1])
            times = _time(lambda t=last: generator.step(t), args.repeats * 5, args.warmup)
            rows.append(_timing_row(f"decode after {context}", 1, times, 1))
    if args.as_json:
        _print_json({"ok": True, "rows": rows})
        return
    table = [
        (r["what"], r["batch"], f"{r['median_ms']:.2f}", f"{r['max_ms']:.2f}",
         f"{r['tokens_per_s']:.0f}")
        for r in rows
    ]  # fmt: skip
    print(_table(("what", "batch", "median ms", "max ms", "tokens/s"), table))


def _generation_text(args: argparse.Namespace, session: Session) -> Text:
    """``--vocab`` as a character vocabulary, or else the text handling the export carries."""
    if args.vocab is None:
        if session.text is None:
            raise ValueError(
                f"{session.manifest_path.name} carries no vocabulary: give --vocab FILE (a JSON "
                "list of characters), or export with favor-export --text FILE"
            )
        return session.text
    try:
        content = json.loads(args.vocab.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"cannot read --vocab {args.vocab}: {error}") from None
    try:
        return Characters(content)
    except (ValueError, TypeError):
        raise ValueError(
            f"--vocab {args.vocab} must be a JSON list of single characters (token id = index)"
        ) from None


def command_generate(args: argparse.Namespace) -> None:
    check_sampling(args.temperature, args.top_k, args.top_p)
    if not args.prompt:
        raise ValueError("--prompt must not be empty: the model needs a token to start from")
    session = _open(args)
    text = _generation_text(args, session)
    generator = Generator(session, prefill_chunk=args.prefill_chunk, static=args.static)
    if not text.fits(generator.vocab_size):
        raise ValueError(
            f"the vocabulary has {text.size} tokens but the model's has {generator.vocab_size}"
        )
    try:
        prompt = text.encode(args.prompt)
    except ValueError as error:
        raise ValueError(f"--prompt: {error}") from None
    if not prompt:
        raise ValueError(f"--prompt {args.prompt!r} encodes to no tokens")
    stream = TextStream(text, prompt)
    echo = not args.as_json
    if echo:
        sys.stdout.write(args.prompt)
    start, pieces, count = time.perf_counter(), [], 0
    for token in generator.stream(
        prompt, args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    ):  # fmt: skip
        pieces.append(stream.push(token))
        count += 1
        if echo:
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    pieces.append(stream.flush())
    elapsed = time.perf_counter() - start
    if not echo:
        _print_json(
            {"ok": True, "text": args.prompt + "".join(pieces), "new_tokens": count,
             "seconds": elapsed}
        )  # fmt: skip
        return
    sys.stdout.write(pieces[-1] + "\n")
    if not args.quiet:
        print(
            f"favor-run: {count} tokens in {elapsed:.2f}s "
            f"({count / max(elapsed, 1e-9):.0f} tokens/s)",
            file=sys.stderr,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="favor-run", description="Run exported favor models on ONNX Runtime.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _global_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run once on inputs from .npz/.npy files")
    _session_args(run)
    run.add_argument("--inputs", type=Path, help=".npz with one array per input name")
    run.add_argument(
        "--input", action="append", metavar="NAME=FILE.npy", help="one input (repeatable)"
    )
    run.add_argument(
        "--output", type=Path, help="write all outputs to this .npz (exactly this path)"
    )
    run.set_defaults(func=command_run)

    bench = sub.add_parser(
        "bench", help="time calls at given shapes and decode steps at given contexts"
    )
    _session_args(bench)
    bench.add_argument(
        "--seq", type=_parse_ints, default=[1, 64, 1024], help="lengths to time [1,64,1024]"
    )
    bench.add_argument("--batch", type=_int_at_least(1), default=1, help="batch size [1]")
    bench.add_argument(
        "--context", type=_parse_ints, default=[], help="causal LMs: contexts to time decode after"
    )
    bench.add_argument(
        "--repeats", type=_int_at_least(1), default=10, help="timed calls per case [10]"
    )
    bench.add_argument("--warmup", type=_int_at_least(0), default=2, help="untimed calls first [2]")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    bench.set_defaults(func=command_bench)

    generate = sub.add_parser("generate", help="stream text from a causal LM export")
    _session_args(generate)
    generate.add_argument(
        "--vocab", type=Path,
        help="JSON list of characters (token id = index) [the vocabulary the export carries]",
    )  # fmt: skip
    generate.add_argument("--prompt", default="The ", help='text to start from ["The "]')
    generate.add_argument(
        "-n", "--max-new-tokens", type=_int_at_least(0), default=200,
        help="tokens to generate [200]",
    )  # fmt: skip
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy [0]")
    generate.add_argument("--top-k", type=int, help="sample from the k likeliest tokens")
    generate.add_argument("--top-p", type=float, help="sample from the smallest set with this mass")
    generate.add_argument("--seed", type=_int_at_least(0), help="makes sampling reproducible")
    generate.add_argument(
        "--prefill-chunk", type=_int_at_least(1), default=DEFAULT_PREFILL_CHUNK,
        help=f"most prompt tokens per graph call; bounds memory [{DEFAULT_PREFILL_CHUNK}]",
    )  # fmt: skip
    generate.add_argument(
        "--static", action="store_true",
        help="run the export's fixed-shape decode and prefill graphs (favor-export --static)",
    )  # fmt: skip
    generate.add_argument("-q", "--quiet", action="store_true", help="no timing line")
    generate.set_defaults(func=command_generate)
    for command in (run, bench, generate):
        _global_flags(command, default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known before parsing, so that a command line argparse rejects is reported as asked.
    as_json, debug = "--json" in argv, "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except (ValueError, ManifestError) as error:
        return _fail(BAD_INPUT, str(error), as_json, debug)
    except KeyboardInterrupt:
        return _fail(INTERRUPTED, "stopped by the user", as_json, debug=False)
    except Exception as error:  # last line of defence: no raw traceback without --debug
        return _fail(INTERNAL_ERROR, f"{type(error).__name__}: {error}", as_json, debug)
    return 0


FAILURES = {
    BAD_INPUT: "error",
    INTERNAL_ERROR: "internal error",
    INTERRUPTED: "interrupted",
}


def _fail(code: int, message: str, as_json: bool, debug: bool) -> int:
    """Report a failure in one line on stderr, and as JSON on stdout with ``--json``."""
    if debug:
        traceback.print_exc()
    message = " ".join(message.splitlines())
    if code == INTERNAL_ERROR and not debug:
        message += " (run with --debug for the traceback)"
    if as_json:
        _print_json({"ok": False, "exit_code": code, "error": message})
    print(f"favor-run: {FAILURES[code]}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
