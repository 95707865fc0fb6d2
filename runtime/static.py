"""``StaticLM``: the fixed-shape decode and prefill graphs of a ``--static`` export, run as one
causal LM that takes any batch and any length.

A ``--static`` export of a causal LM holds two graphs with every shape fixed (for NPUs): a decode
step (``batch x 1`` tokens) and a prefill chunk (``batch x C`` tokens), where ``batch`` and ``C``
are the manifest's ``static.batch`` and ``static.prefill_chunk``. A call of ``L`` tokens runs
``L // C`` prefill chunks, then ``L % C`` decode steps for the rest: no token is padded, so no
padding can reach the state, and the logits and state are those of the dynamic graph. Rows are
run ``batch`` at a time, a short last group filled with zero-state rows whose results are dropped.
numpy and onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import Manifest, ManifestError

# Manifest file roles of the two graphs.
DECODE, PREFILL = "decode", "prefill"


class StaticLM:
    """The static pair of an export, called like its dynamic graph.

    Args:
        graphs: the decode and prefill graph files by role (``decode``, ``prefill``).
        batch, chunk: their fixed rows and prefill length.
        tokens, logits: the token input's and logits output's names.
        state: ``(input, output)`` name pairs of the carried state.
        providers: ONNX Runtime provider names, in order of preference.
        options: the session options of both graphs.

    Raises ManifestError when ONNX Runtime cannot load a graph.
    """

    def __init__(
        self,
        graphs: Mapping[str, Path],
        batch: int,
        chunk: int,
        tokens: str,
        logits: str,
        state: Sequence[tuple[str, str]],
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        options: ort.SessionOptions | None = None,
    ) -> None:
        self.batch, self.chunk = batch, chunk
        self.tokens, self.logits, self.state = tokens, logits, tuple(state)
        self.sessions = {}
        for role in (DECODE, PREFILL):
            try:
                self.sessions[role] = ort.InferenceSession(
                    str(graphs[role]), options, providers=list(providers)
                )
            except Exception as error:  # onnxruntime's exception types are not exported
                raise ManifestError(
                    f"onnxruntime cannot load {graphs[role].name}: {str(error).splitlines()[0]}"
                ) from None

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, files: Mapping[str, Path], **session: object
    ) -> StaticLM:
        """The pair of an export: ``files`` by role (:func:`favor.runtime.manifest.export_files`);
        ``session`` keywords as for the constructor. ManifestError if the export has none."""
        if manifest.static is None or not {DECODE, PREFILL} <= set(files):
            raise ManifestError(f"{manifest.name} has no static decode and prefill graphs")
        return cls(
            files, int(manifest.static["batch"]), int(manifest.static["prefill_chunk"]),
            manifest.tokens.name, manifest.logits.name,
            [(s.input, s.output) for s in manifest.state], **session,
        )  # fmt: skip

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``tokens (B, L)`` and the state inputs ``(B, ...)`` -> logits ``(B, L, V)`` and the
        new state, for any ``B, L >= 1``: what the export's dynamic graph returns."""
        tokens = np.asarray(feeds[self.tokens])
        rows = tokens.shape[0]
        groups = []
        for start in range(0, rows, self.batch):
            group = {name: _rows(np.asarray(feeds[name]), start, self.batch) for name in feeds}
            groups.append(self._sequence(group))
        return {name: np.concatenate([g[name] for g in groups])[:rows] for name in groups[0]}

    def _sequence(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One group of exactly ``batch`` rows: whole chunks, then decode steps."""
        tokens = feeds[self.tokens]
        state = {name: feeds[name] for name, _ in self.state}
        length = tokens.shape[1]
        bounds = [
            (s, s + self.chunk, PREFILL) for s in range(0, length - self.chunk + 1, self.chunk)
        ]
        done = bounds[-1][1] if bounds else 0
        bounds += [(s, s + 1, DECODE) for s in range(done, length)]
        logits = []
        for begin, end, role in bounds:
            names = [self.logits, *(output for _, output in self.state)]
            values = self.sessions[role].run(names, {self.tokens: tokens[:, begin:end], **state})
            logits.append(values[0])
            state = {name: value for (name, _), value in zip(self.state, values[1:], strict=True)}
        return {
            self.logits: np.concatenate(logits, axis=1),
            **{output: state[name] for name, output in self.state},
        }


def _rows(array: np.ndarray, start: int, count: int) -> np.ndarray:
    """Rows ``start .. start + count`` of ``array``, zero-filled past its end."""
    part = array[start : start + count]
    if part.shape[0] == count:
        return part
    filler = np.zeros((count - part.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([part, filler])
