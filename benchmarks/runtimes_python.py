"""The Python rows of :mod:`benchmarks.runtimes`: ``favor.runtime``'s Generator, and plain
``InferenceSession.run`` with numpy feeds.

The timing protocol is the JavaScript one (``benchmarks/js/measure.mjs``), step for step: the
same token ids, loads, cold sequence and warm-up (:meth:`PythonRow.start`), then bursts of
prefills from an empty state and decode steps (:meth:`PythonRow.burst`). Reports hold every
time in milliseconds, with the JavaScript reports' keys; medians come later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from favor.runtime import Generator, Session
from favor.runtime.manifest import export_files, find_manifest, load_manifest
from favor.runtime.session import session_options

VARIANTS = ("generator", "static", "plain")


class Decoder(Protocol):
    """One sequence through a causal LM: ``prefill`` feeds the prompt in one call."""

    def reset(self) -> None: ...

    def prefill(self, tokens: Sequence[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...


def token_ids(count: int, vocab_size: int, start: int = 0) -> list[int]:
    """The ids every runtime feeds, shape ``(count,)`` (their values do not change the work)."""
    return [(7 * (start + i) + 3) % vocab_size for i in range(count)]


def elapsed_ms(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return 1e3 * (time.perf_counter() - start)


class PlainDecoder:
    """``InferenceSession.run`` with numpy feeds: each call copies the state out of ONNX Runtime
    and back in, as onnxruntime-node's ``session.run`` does. The state is wired by the manifest."""

    def __init__(self, session: ort.InferenceSession, export_dir: Path) -> None:
        manifest = load_manifest(find_manifest(export_dir), verify=False)
        self.session = session
        self.tokens = manifest.tokens.name
        self.inputs = [entry.input for entry in manifest.state]
        self.outputs = [manifest.logits.name, *(entry.output for entry in manifest.state)]
        self.zeros = {
            entry.name: np.zeros([1 if isinstance(d, str) else d for d in entry.shape], entry.dtype)
            for entry in manifest.state_inputs
        }
        self.reset()

    def reset(self) -> None:
        self.state = self.zeros

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        feeds = {**self.state, self.tokens: np.asarray(tokens, np.int64)[None, :]}
        logits, *state = self.session.run(self.outputs, feeds)
        self.state = dict(zip(self.inputs, state, strict=True))
        return logits

    def step(self, token: int) -> np.ndarray:
        return self.prefill([token])


class PythonRow:
    """One Python row: ``variant`` with ``threads`` intra-op threads (None: ONNX Runtime's
    default), timed as the JavaScript runner times its rows (:meth:`start`, :meth:`burst`).

    ``generator``: ``Session`` (manifest read, files verified, session created) and
    ``Generator``. ``static``: the same, the Generator driving the export's ``--static`` pair
    (whole prefill chunks, then decode steps), both of its sessions created. ``plain``: an
    ``InferenceSession`` with favor's session options (``mem_pattern`` turns ONNX Runtime's
    memory pattern back on) and :class:`PlainDecoder`.
    """

    def __init__(
        self,
        export_dir: Path,
        variant: str,
        threads: int | None,
        plan: dict,
        *,
        mem_pattern: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if mem_pattern and variant != "plain":
            raise ValueError("mem_pattern applies to the plain variant only")
        self.export_dir, self.variant, self.threads = export_dir, variant, threads
        self.mem_pattern = mem_pattern
        manifest_path = find_manifest(export_dir)
        self.manifest = load_manifest(manifest_path, verify=False)
        self.onnx = export_files(manifest_path, self.manifest)["onnx"]
        tokens = self.manifest.tokens
        vocab_size = tokens.range[1] if tokens.range else int(self.manifest.logits.shape[-1])
        self.plan = {**plan, "vocab_size": vocab_size}
        self.decoder: Decoder | None = None

    def load(self) -> Decoder:
        if self.variant in ("generator", "static"):
            session = Session(self.export_dir, "cpu", self.threads)
            static = self.variant == "static"
            return Generator(session, prefill_chunk=self.plan["prefill"], static=static)
        options = session_options(self.threads)
        options.enable_mem_pattern = self.mem_pattern
        created = ort.InferenceSession(str(self.onnx), options, providers=["CPUExecutionProvider"])
        return PlainDecoder(created, self.export_dir)

    def start(self) -> dict:
        """The JavaScript runner's first report: loads, the cold sequence and warm-up, and one
        burst of ``prefill_repeats`` prefills and ``steps`` steps."""
        load_ms = []
        for _ in range(self.plan["loads"]):
            start = time.perf_counter()
            self.decoder = self.load()
            load_ms.append(1e3 * (time.perf_counter() - start))
        return {
            "runtime": "python",
            "module": "onnxruntime",
            "versions": {"ort": ort.__version__},
            "variant": self.variant,
            "threads": self.threads or 0,
            "load_ms": load_ms,
            **start_decoder(self.decoder, self.plan),
            **self.burst(self.plan["prefill_repeats"], self.plan["steps"]),
        }

    def burst(self, prefills: int, steps: int) -> dict:
        return time_burst(self.decoder, self.plan, prefills, steps)

    def close(self) -> None:
        self.decoder = None


def prefill_once(decoder: Decoder, plan: dict) -> float:
    """Reset ``decoder`` and prefill from the empty state; the prefill's time."""
    decoder.reset()
    prompt = token_ids(plan["prefill"], plan["vocab_size"])
    return elapsed_ms(lambda: decoder.prefill(prompt))


def decode_steps(decoder: Decoder, plan: dict, count: int) -> tuple[list[float], float]:
    """``count`` steps after a prefill: each step's time, and their wall time together."""
    began = time.perf_counter()
    step_ms = [
        elapsed_ms(lambda token=token: decoder.step(token))
        for token in token_ids(count, plan["vocab_size"], plan["prefill"])
    ]
    return step_ms, 1e3 * (time.perf_counter() - began)


def start_decoder(decoder: Decoder, plan: dict) -> dict:
    """measure.mjs's ``startDecoder``: the cold sequence, then untimed sequences until
    ``warmup_ms`` have passed since it began."""
    began = time.perf_counter()
    cold_prefill = prefill_once(decoder, plan)
    cold_steps, _ = decode_steps(decoder, plan, plan["steps"])
    sequences = 0
    while 1e3 * (time.perf_counter() - began) < plan["warmup_ms"]:
        prefill_once(decoder, plan)
        decode_steps(decoder, plan, plan["steps"])
        sequences += 1
    return {
        "cold_prefill_ms": cold_prefill,
        "cold_step_ms": cold_steps,
        "warmup_sequences": sequences,
    }


def time_burst(decoder: Decoder, plan: dict, prefills: int, steps: int) -> dict:
    """measure.mjs's ``timeBurst``: ``prefills`` timed prefills (one untimed where 0), then
    ``steps`` timed steps after the last."""
    prefill_ms = [prefill_once(decoder, plan) for _ in range(max(prefills, 1))][:prefills]
    step_ms, decode_ms = decode_steps(decoder, plan, steps)
    return {"prefill_ms": prefill_ms, "step_ms": step_ms, "decode_ms": decode_ms}
