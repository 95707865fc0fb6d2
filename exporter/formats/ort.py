"""``--format ort``: the ONNX graph in ONNX Runtime's own format, for ORT Mobile and minimal builds.

``NAME.ort`` is converted from the ``NAME.onnx`` that the onnx format stages earlier in the same
export (the int8 graph with ``--quantize int8``), so it requires that format
(:attr:`Format.requires`). It is converted as ONNX Runtime's converter
(``python -m onnxruntime.tools.convert_onnx_models_to_ort``) converts for no particular target:
every optimization level, for the CPU provider, saved from the session, in the *fixed* style:

- Fixed: every optimization is applied at conversion and saved in the graph. A minimal build
  loads the saved graph as it is and binds each node to a kernel, so what it runs is what was
  validated here. The optimizations do not specialize shapes (the batch and sequence dims
  stay symbolic), so the file runs at every length the ``.onnx`` does; validation runs it over
  the whole sweep, decode steps included. It runs as fast as the ``.onnx`` does in a full build,
  and float32 and int8 files give the ``.onnx``'s outputs bit for bit.
- Runtime: only the basic optimizations are applied, and the others are saved as records that an
  *extended* minimal build replays once a compiling provider (NNAPI, CoreML) has taken its
  nodes, and only with ``session.enable_saved_runtime_optimizations`` set. It is not written:
  the NPU providers take 21 of the dynamic graph's 329 nodes (``--static`` writes graphs for
  them), and a plain minimal build runs the graph unfused: on one x86 thread, the sample LM's
  int8 decode step took 27% longer and its prefill 15% (float32 and float16: the same).

Two of the CPU provider's transformers are left out, as they make a file for one machine:

- ``NchwcTransformer``, x86's blocked layout for convolutions, whose kernels ARM builds lack (the
  converter leaves it out for every target but amd64).
- ``FuseFp16InitializerToFp32NodeTransformer``. For most ops the CPU provider has float32
  kernels only, so it casts each float16 weight to float32 in front of them; this transformer
  folds each cast into a float32 copy of the weight, and does so only where the converting CPU
  has no float16 arithmetic. Left in, it makes ``--dtype fp16`` files twice the ``.onnx``'s size
  (2597 KiB against 1266 for the sample LM). Left out, the weights stay float16 and the casts
  run in each call: 1427 KiB, and on one x86 thread the sample LM's decode step takes a quarter
  longer (1.32 ms against 1.07) and a 256-token prefill 8% longer. The outputs match the
  ``.onnx``'s within float32 rounding (the matmuls run on other buffers), not bit for bit.

An ``.ort`` is larger than its ``.onnx`` by its graph, not its weights: the flatbuffer keeps every
value's type and shape and every node's edges, about 130 KiB for the sample LM's 317 nodes
(float32) and 185 KiB for the 418 of its float16 graph with the casts, against about 27 KiB
in the ONNX protobuf. Its weights take the same bytes. bfloat16 graphs cannot be converted: the CPU
provider has no bfloat16 kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import onnxruntime as ort

from ..errors import ExportError
from ..quantize import QuantizationSettings
from ..specs import ModelSpec
from ..validation import Runner
from .base import Built, ExportJob, Format, register_format
from .onnx import onnxruntime_runners, recorded_int8

if TYPE_CHECKING:
    from favor.runtime.contract import Manifest

    from ..options import ExportOptions

# The provider the file is optimized for, and the only one its runners use.
PROVIDER = "CPUExecutionProvider"
# ONNX Runtime's names of the transformers left out (module docstring).
LEFT_OUT = ("NchwcTransformer", "FuseFp16InitializerToFp32NodeTransformer")


@register_format
class OrtFormat(Format):
    """``NAME.ort``, converted from the export's ``NAME.onnx``.

    ``int8`` is the graph's int8 settings with ``--quantize int8`` (its runners are held to
    their budget), None for a float graph.
    """

    name = "ort"
    requires: ClassVar[Mapping[str, str]] = {"onnx": "converts the ONNX graph"}

    def __init__(self, int8: QuantizationSettings | None) -> None:
        self.int8 = int8

    @classmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        if options.dtype == "bfloat16":
            raise ExportError(
                "--format ort converts for ONNX Runtime's CPU provider, which has no bfloat16 "
                "kernels; export --dtype fp16 or fp32"
            )
        return cls(options.int8_settings)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        return cls(recorded_int8(manifest)) if "ort" in manifest.files else None

    def file_names(self, name: str) -> dict[str, str]:
        return {"ort": f"{name}.ort"}

    def build(self, job: ExportJob) -> Built:
        # The graph the onnx format staged (OnnxFormat.file_names), built before this one.
        source = job.stage / f"{job.name}.onnx"
        path = job.stage / self.file_names(job.name)["ort"]
        job.say("convert", f"{path.name}: ORT format, fixed-style for the CPU provider")
        convert_to_ort(source, path)
        files = {"ort": path}
        return Built(files, self.runners(files, job.spec))

    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        return onnxruntime_runners(
            files["ort"], spec, suffix=" ort" if self.int8 is None else " ort int8",
            budget=None if self.int8 is None else self.int8.budget, providers=[PROVIDER],
        )  # fmt: skip


def convert_to_ort(source: Path, target: Path) -> None:
    """Write the ORT-format model of the ONNX graph ``source`` (and its external data, if any)
    to ``target``, optimized as the module docstring says.

    Raises ExportError if ONNX Runtime cannot load, convert or write the graph (a full disk
    too: ONNX Runtime reports it in its own exception).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    try:
        # Creating the session optimizes the graph and saves it: the session itself is not used.
        ort.InferenceSession(
            str(source), options, providers=[PROVIDER], disabled_optimizers=list(LEFT_OUT)
        )
    except Exception as error:  # onnxruntime's exception types are not exported
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(
            f"onnxruntime {ort.__version__} cannot convert {source.name} to the ORT format: {first}"
        ) from None
