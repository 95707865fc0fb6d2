"""``--format onnx``: the ONNX graph, run by ONNX Runtime and ONNX's reference evaluator.

With ``--quantize int8`` the graph written is int8 (:mod:`favor.exporter.quantize`): the float
graph it is quantized from is validated elementwise as usual but not published, and the int8
graph is held to the scheme's parity budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from .. import linear_attention
from ..errors import MissingKernelError
from ..files import writing
from ..onnx_graph import build_onnx, save_onnx
from ..quant_budget import ParityBudget
from ..quantize import DEFAULT_SETTINGS, INT8_SCHEMES, QuantizationSettings, quantize_int8
from ..specs import ModelSpec
from ..validation import Runner
from ..validation.runners import Run, loaded_or_raising, to_numpy
from .base import Built, ExportJob, Format, register_format

if TYPE_CHECKING:
    from favor.runtime.contract import Manifest

    from ..options import ExportOptions

# ONNX's reference evaluator is pure Python: only cases this small (batch * seq) run through it.
REFERENCE_MAX_TOKENS = 64


@register_format
class OnnxFormat(Format):
    """``NAME.onnx`` (and ``NAME.onnx.data`` for graphs stored with external data).

    ``int8`` quantizes the graph's weight MatMuls with those settings; None writes it float.
    """

    name = "onnx"

    def __init__(
        self,
        opset: int | None,
        exporter: str | None,
        *,
        fused_attention: bool = False,
        external_data: bool | None = None,
        int8: QuantizationSettings | None = None,
    ) -> None:
        self.opset = opset
        self.exporter = exporter
        self.fused_attention = fused_attention
        self.external_data = external_data
        self.int8 = int8

    @classmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        return cls(
            options.opset, exporter, fused_attention=options.fused_attention,
            external_data=options.external_data, int8=options.int8_settings,
        )  # fmt: skip

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        if "onnx" not in manifest.files:
            return None
        return cls(
            manifest.opset, manifest.exporter, fused_attention=manifest.fused_attention,
            int8=recorded_int8(manifest),
        )  # fmt: skip

    def file_names(self, name: str) -> dict[str, str]:
        # save_onnx names the external data file after the graph
        return {"onnx": f"{name}.onnx", "onnx_data": f"{name}.onnx.data"}

    def build(self, job: ExportJob) -> Built:
        job.say("export", f"ONNX opset {self.opset} with torch's {self.exporter} exporter")
        graph = build_onnx(
            job.module, job.spec, job.output_dims, opset=self.opset, exporter=self.exporter,
            fused_attention=self.fused_attention,
        )  # fmt: skip
        job.say("check", "onnx.checker (full check) and shape inference")
        entries = {
            "opset": self.opset,
            "exporter": self.exporter,
            "fused_attention": self.fused_attention,
        }
        name = self.file_names(job.name)["onnx"]
        if self.int8 is None:
            files = self._write(graph, job, name)
            return Built(files, self.runners(files, job.spec), entries)
        float_graph = self._write(graph, job, f"{job.name}.float32.onnx")["onnx"]
        quantized = quantize_int8(graph, job.module, self.int8)
        job.say("quantize", quantized.summary())
        files = self._write(quantized.model, job, name)
        runners = [
            *onnxruntime_runners(float_graph, job.spec),
            reference_runner(float_graph, job.spec),
            *_int8_runners(files["onnx"], job.spec, quantized.settings.budget),
        ]
        return Built(files, runners, entries | {"quantization": quantized.to_json()})

    def _write(self, graph: onnx.ModelProto, job: ExportJob, file_name: str) -> dict[str, Path]:
        with writing(job.out / file_name):
            written = save_onnx(graph, job.stage / file_name, external_data=self.external_data)
        return {
            role: job.stage / w for role, w in zip(("onnx", "onnx_data"), written, strict=False)
        }

    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        graph = files["onnx"]
        if self.int8 is not None:
            return _int8_runners(graph, spec, self.int8.budget)
        return [*onnxruntime_runners(graph, spec), reference_runner(graph, spec)]


def recorded_int8(manifest: Manifest) -> QuantizationSettings | None:
    """The int8 settings an export's graph is held to: its recorded scheme's, None if float.

    An unknown scheme is held to the default one's budget, never to one stored in the
    manifest: a manifest is not trusted.
    """
    quantization = manifest.quantization
    if quantization is None:
        return None
    return INT8_SCHEMES.get(quantization.get("scheme"), DEFAULT_SETTINGS)


def _int8_runners(graph: Path, spec: ModelSpec, budget: ParityBudget) -> list[Runner]:
    return onnxruntime_runners(graph, spec, suffix=" int8", budget=budget)


def reference_runner(graph: Path, spec: ModelSpec) -> Runner:
    """ONNX's reference evaluator on ``graph``, for cases of at most
    :data:`REFERENCE_MAX_TOKENS` tokens."""
    return Runner(
        "onnx-reference",
        loaded_or_raising(lambda: _reference_run(graph, spec)),
        max_tokens=REFERENCE_MAX_TOKENS,
    )


def onnxruntime_providers() -> list[str]:
    """CPU always; CUDA too where onnxruntime-gpu sees a device."""
    available = ort.get_available_providers()
    return [p for p in ("CPUExecutionProvider", "CUDAExecutionProvider") if p in available]


def onnxruntime_runners(
    graph: Path,
    spec: ModelSpec,
    *,
    suffix: str = "",
    budget: ParityBudget | None = None,
    providers: Sequence[str] | None = None,
) -> list[Runner]:
    """One runner per ONNX Runtime provider (``providers``, default
    :func:`onnxruntime_providers`), labelled ``onnxruntime-cpu`` etc. plus ``suffix``, held to
    ``budget`` if given. Each also runs the decode check."""
    return [
        Runner(
            "onnxruntime-" + provider.removesuffix("ExecutionProvider").lower() + suffix,
            loaded_or_raising(lambda p=provider: _onnxruntime_run(graph, p, spec)),
            budget=budget,
            decode=True,
        )
        for provider in (onnxruntime_providers() if providers is None else providers)
    ]


def validation_options() -> ort.SessionOptions:
    """ONNX Runtime's options for the sessions validation runs exported graphs in."""
    options = ort.SessionOptions()
    # One thread makes the reductions' order, and so the reported errors, reproducible.
    options.intra_op_num_threads = 1
    # Fatal only: an error running the graph raises, and the report carries it.
    options.log_severity_level = 4
    return options


def _onnxruntime_session(path: Path, provider: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), validation_options(), providers=[provider])
    except OrtNotImplemented as error:
        # e.g. a bfloat16 graph on the CPU provider: name the op, not ONNX Runtime's traceback.
        found = re.search(r"implementation for (\S+) node with name '([^']*)'", str(error))
        what = f"{found[1]} (node {found[2]!r})" if found else str(error).splitlines()[0]
        raise MissingKernelError(
            f"onnxruntime {ort.__version__}'s {provider} has no kernel for {what}"
        ) from None


def _onnxruntime_run(graph: Path, provider: str, spec: ModelSpec) -> Run:
    session = _onnxruntime_session(graph, provider)
    names = [t.name for t in spec.inputs]
    return lambda x: session.run(None, {n: to_numpy(t) for n, t in zip(names, x, strict=True)})


def _reference_run(graph: Path, spec: ModelSpec) -> Run:
    from onnx.reference import ReferenceEvaluator

    # A fused graph's contrib LinearAttention runs on ONNX's reference implementation of the
    # standard op, which has the same semantics.
    evaluator = ReferenceEvaluator(str(graph), new_ops=[linear_attention.LinearAttention])
    names = [t.name for t in spec.inputs]
    return lambda x: list(
        evaluator.run(None, {n: to_numpy(t) for n, t in zip(names, x, strict=True)})
    )
