"""``--static``: fixed-shape graphs for mobile NPUs (NNAPI, CoreML), validated like any format.

A causal LM gets two graphs sharing one weights file: a decode step (``batch x 1`` tokens,
role ``decode``) and a prefill chunk (``batch x C``, role ``prefill``), run together by
:class:`favor.runtime.static.StaticLM`, whole chunks then decode steps. An encoder gets one graph
at ``batch x seq`` (role ``static``) taking the key padding mask, which shorter inputs are
padded under. Each graph's ONNX Runtime mobile usability check is printed and recorded in the
manifest's ``static`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import torch

from favor.runtime.contract import ModelKind, Sampler
from favor.runtime.static import DECODE, PREFILL, StaticLM

from ..errors import ExportError
from ..specs import ModelSpec
from ..static import check_usability, fixed_graph, save_sharing_weights, summary_line
from ..validation import Runner
from ..validation.runners import Run, loaded_or_raising, to_numpy
from .base import Built, ExportJob, Format, register_format
from .onnx import validation_options

if TYPE_CHECKING:
    from favor.runtime.contract import Manifest

    from ..options import ExportOptions

DEFAULT_PREFILL_CHUNK = 64
ENCODER = "static"
DATA = "static_data"
_MASKS = (Sampler.PADDING_MASK, Sampler.KEEP_MASK)


@register_format
class StaticFormat(Format):
    """The fixed-shape graphs at ``batch`` rows: ``prefill_chunk`` tokens per prefill call
    (causal LMs), or ``seq`` tokens (encoders; None: the model's longest sequence)."""

    name = "static"

    def __init__(self, batch: int, prefill_chunk: int, seq: int | None, opset: int) -> None:
        self.batch = batch
        self.prefill_chunk = prefill_chunk
        self.seq = seq
        self.opset = opset

    @classmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        return cls(
            options.static_batch or 1, options.prefill_chunk or DEFAULT_PREFILL_CHUNK,
            options.static_seq, options.opset,
        )  # fmt: skip

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        entry = manifest.static
        if entry is None:
            return None
        chunk = entry.get("prefill_chunk", DEFAULT_PREFILL_CHUNK)
        return cls(entry["batch"], chunk, entry.get("seq"), manifest.opset or 17)

    def file_names(self, name: str) -> dict[str, str]:
        return {
            DECODE: f"{name}.decode.onnx",
            PREFILL: f"{name}.prefill.onnx",
            ENCODER: f"{name}.static.onnx",
            DATA: f"{name}.static.data",
        }

    def _graph_sizes(self, spec: ModelSpec) -> dict[str, dict[str, int]]:
        """``{role: sizes}`` of the graphs ``spec``'s model gets; ExportError if none fits."""
        if isinstance(spec.kind, ModelKind) and spec.kind is ModelKind.CAUSAL_LM:
            return {
                DECODE: {"batch": self.batch, "seq": 1},
                PREFILL: {"batch": self.batch, "seq": self.prefill_chunk},
            }
        if not any(t.sampler in _MASKS for t in spec.inputs):
            raise ExportError(
                "--static needs a causal LM (decode and prefill graphs) or a model with a key "
                "padding mask input (padded to a fixed length); this model has neither"
            )
        seq = self.seq or spec.max_length
        if seq is None:
            raise ExportError(
                "--static for a model without a longest sequence needs --static-seq N"
            )
        return {ENCODER: {"batch": self.batch, spec.sequence_dim or "seq": seq}}

    def build(self, job: ExportJob) -> Built:
        if isinstance(job.module, torch.jit.ScriptModule):
            raise ExportError("--static traces the model again, which a TorchScript archive cannot")
        sizes = self._graph_sizes(job.spec)
        names = self.file_names(job.name)
        graphs = {}
        for role, at in sizes.items():
            job.say("static", f"{role} graph at {', '.join(f'{k}={v}' for k, v in at.items())}")
            graphs[role] = fixed_graph(job.module, job.spec, at, self.opset)
        files = {role: job.stage / names[role] for role in graphs}
        files[DATA] = job.stage / names[DATA]
        save_sharing_weights(graphs, files, files[DATA])
        entry = {"batch": self.batch, "graphs": {}}
        entry |= {"prefill_chunk": self.prefill_chunk} if ENCODER not in sizes else {
            "seq": sizes[ENCODER][job.spec.sequence_dim or "seq"]
        }  # fmt: skip
        for role, at in sizes.items():
            usability, lines = check_usability(files[role])
            for line in lines:
                job.say("usability", f"{role}: {line}")
            job.say("static", summary_line(role, usability))
            entry["graphs"][role] = {"sizes": at, "usability": usability}
        return Built(files, self.runners(files, job.spec, entry), {"static": entry})

    def runners(
        self, files: Mapping[str, Path], spec: ModelSpec, entry: dict | None = None
    ) -> list[Runner]:
        if DECODE in files:
            return [
                Runner(
                    "onnxruntime-cpu static",
                    loaded_or_raising(lambda: self._lm(files, spec)),
                    decode=True,
                )
            ]
        # Longer cases than the graph's fixed length cannot run on it; shorter ones are padded.
        length = onnx.load(str(files[ENCODER]), load_external_data=False).graph.input[0]
        most = length.type.tensor_type.shape.dim[1].dim_value
        return [
            Runner(
                "onnxruntime-cpu static",
                loaded_or_raising(lambda: self._encoder(files, spec)),
                max_sizes={spec.sequence_dim or "seq": most},
            )
        ]

    def _lm(self, files: Mapping[str, Path], spec: ModelSpec) -> Run:
        names = [t.name for t in spec.inputs]
        carried = {s.input for s in spec.states} | {s.output for s in spec.states}
        (tokens,) = [n for n in names if n not in carried]
        (logits,) = [n for n in spec.output_names if n not in carried]
        state = [(s.input, s.output) for s in spec.states]
        pair = StaticLM(
            files,
            self.batch,
            self.prefill_chunk,
            tokens,
            logits,
            state,
            options=validation_options(),
        )

        def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
            outputs = pair.run({n: to_numpy(t) for n, t in zip(names, inputs, strict=True)})
            return [outputs[name] for name in spec.output_names]

        return run

    def _encoder(self, files: Mapping[str, Path], spec: ModelSpec) -> Run:
        session = ort.InferenceSession(
            str(files[ENCODER]), validation_options(), providers=["CPUExecutionProvider"]
        )
        fixed = {i.name: i.shape for i in session.get_inputs()}
        names = [t.name for t in spec.inputs]
        masks = {t.name: t.sampler for t in spec.inputs if t.sampler in _MASKS}

        def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
            arrays = {n: to_numpy(t) for n, t in zip(names, inputs, strict=True)}
            rows, length = arrays[names[0]].shape[:2]
            if length > fixed[names[0]][1]:
                raise ValueError(
                    f"the static graph takes at most {fixed[names[0]][1]} tokens, got {length}"
                )
            outputs = []
            for start in range(0, rows, self.batch):
                feeds = {
                    n: _padded(a[start : start + self.batch], fixed[n], masks.get(n))
                    for n, a in arrays.items()
                }
                outputs.append(session.run(None, feeds))
            return [
                _cut(np.concatenate([o[i] for o in outputs])[:rows], length, fixed[names[0]][1])
                for i in range(len(spec.output_names))
            ]

        return run


def _padded(array: np.ndarray, shape: list[int], mask: Sampler | None) -> np.ndarray:
    """``array`` padded up to ``shape``: mask positions as padding, anything else with zeros."""
    fill = {Sampler.PADDING_MASK: True, Sampler.KEEP_MASK: False}.get(mask, 0)
    out = np.full(shape, fill, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def _cut(output: np.ndarray, length: int, seq: int) -> np.ndarray:
    """``output`` with its sequence axis (the second, where it has the graph's length) cut."""
    return output[:, :length] if output.ndim > 1 and output.shape[1] == seq else output
