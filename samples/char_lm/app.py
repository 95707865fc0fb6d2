"""Stream text from the exported character-level LM: an app that ships without torch.

    python samples/char_lm/app.py EXPORT_DIR [--prompt "The "] [-n 300] [--temperature 0.8]

It imports favor.runtime only. The export carries its vocabulary (favor-export took
samples/char_lm/vocab.json from beside the checkpoint), so the app needs nothing else. The prompt
is prefilled in one call; after that each character is one call of the same graph, with the
model's constant-size state carried between calls, so the cost per character does not grow with
the text. The sample model was trained on 256-character windows, so by default the state is
rebuilt from the last 128 characters every 256 (--window).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from favor.runtime import Generator, ManifestError, Session, TextStream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="directory written by favor-export")
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--window", type=int, default=256, help="history the model was trained on (0: unlimited)"
    )
    args = parser.parse_args()

    try:
        session = Session(args.export)
        text = session.text
    except ManifestError as error:
        sys.exit(f"app: {error}")
    if text is None:
        sys.exit(f"app: {args.export} carries no vocabulary; export with favor-export --text")
    try:
        prompt = text.encode(args.prompt)
    except ValueError as error:
        sys.exit(f"app: the prompt cannot be encoded: {error}")
    generator = Generator(session)
    print(f"[{session.onnx_path.name} on {session.device}]", file=sys.stderr)
    sys.stdout.write(args.prompt)
    stream = TextStream(text, prompt)
    start, count = time.perf_counter(), 0
    for token in generator.stream(
        prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, seed=args.seed, window=args.window or None,
    ):  # fmt: skip
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
        count += 1
    sys.stdout.write(stream.flush())
    elapsed = time.perf_counter() - start
    print(f"\n[{count} characters in {elapsed:.2f}s, {count / elapsed:.0f}/s]", file=sys.stderr)


if __name__ == "__main__":
    main()
