"""The decode check: a causal LM's state carried through the exported graph's inputs and
outputs, token by token, must give the logits of one full-sequence PyTorch pass."""

from __future__ import annotations

import numpy as np
import torch

from ..specs import ModelSpec
from .record import record
from .report import ValidationReport
from .runners import Expected, Runner

# Chunk size assumed for a spec that records none: decode then starts after 5 prompt tokens.
_DEFAULT_CHUNK = 8


def check_decode(
    report: ValidationReport,
    runner: Runner,
    expected: Expected,
    spec: ModelSpec,
    atol: float | None,
    rtol: float | None,
) -> None:
    """Prefill part of a sequence, decode the rest one token per call, compare with one pass.

    The prompt is ``chunk // 2 + 1`` tokens, so prefill ends inside a chunk and decode crosses
    a chunk boundary. Adds one row, ``"<label> (decode)"``, for the logits.
    """
    chunk = spec.chunk_size or _DEFAULT_CHUNK
    length = chunk + 5 if spec.max_length is None else min(chunk + 5, spec.max_length)
    full_inputs = spec.sample({"batch": 2, "seq": length}, seed=99)
    names = [t.name for t in spec.inputs]
    state_inputs = [names.index(s.input) for s in spec.states]
    state_outputs = [spec.output_names.index(s.output) for s in spec.states]
    (token_input,) = (i for i in range(len(names)) if i not in state_inputs)
    (logits,) = (i for i in range(len(spec.output_names)) if i not in state_outputs)
    want = expected(full_inputs)[logits]
    tokens = full_inputs[token_input]
    prefill = chunk // 2 + 1

    def decode() -> list[np.ndarray]:
        steps, carried = [], [full_inputs[i] for i in state_inputs]
        for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
            feeds = dict(zip(state_inputs, carried, strict=True))
            feeds[token_input] = tokens[:, start:stop]
            outputs = runner.run(tuple(feeds[i] for i in range(len(names))))
            steps.append(outputs[logits])
            carried = [torch.from_numpy(np.asarray(outputs[i])) for i in state_outputs]
        return [np.concatenate(steps, 1)]

    case = f"batch=2 prefill={prefill} then {tokens.shape[1] - prefill} decode steps"
    record(
        report, f"{runner.label} (decode)", case, (spec.output_names[logits],), decode, (want,),
        atol, rtol, runner.budget,
    )  # fmt: skip
