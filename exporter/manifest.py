"""The manifest written beside the exported files, and reading it back.

The runtime learns everything from it: inputs and outputs with dtypes and symbolic dims, which
outputs feed which inputs on the next call, the attention configuration of every layer, the
validation report, and the sha256 of every file. ``manifest.schema.json`` beside this module is
its JSON schema. Reading a manifest back is :mod:`favor.runtime.manifest`'s job, shared with
the apps that load exports.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jsonschema
import onnx
import onnxruntime as ort
import torch
from torch import nn

from favor.ops import FavorAttention
from favor.ops.features import DATA_DEPENDENT_KERNELS
from favor.runtime.contract import (
    FORMAT,
    FORMAT_VERSION,
    FileEntry,
    Manifest,
    Sampler,
    StateEntry,
    TensorEntry,
)
from favor.runtime.manifest import sha256_file

from .errors import ExportError
from .specs import ModelSpec, StateSpec, TensorSpec
from .versions import package_version

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
# Entries favor-validate reads beyond those favor.runtime.manifest checks for every reader.
VALIDATION_ENTRIES = ("dtype", "quantization", "example_sizes", "sweep")
# The most elements one input of one validation case may have: a manifest is not trusted, and a
# sweep of batch 100000 x seq 100000 would have favor-validate allocate 80 GB. The sweeps
# favor-export writes stay below 10^5.
MAX_CASE_ELEMENTS = 1 << 26


def library_versions() -> dict[str, str | None]:
    return {
        "favor-export": package_version("favor-export"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxscript": package_version("onnxscript"),
    }


def attention_layers(model: nn.Module) -> list[dict]:
    """Configuration of every FavorAttention inside ``model``, with its submodule path."""
    layers = []
    for path, sub in model.named_modules():
        # FavorAttention only, not every attention layer (.attention_modules.is_attention): an
        # entry records a kernel, projection and chunking, which LaraAttention lacks, read from
        # config(), which TorchScript does not keep.
        if isinstance(sub, FavorAttention):
            layer = {"path": path, **sub.config(), "feature_dim": sub.feature_dim}
            # A subclass configured by other names (performer_compat's feature_map) still has
            # the kernel and projection FavorAttention runs.
            layer.setdefault("kernel", sub.kernel)
            layer.setdefault("projection", sub.projection)
            if sub.calibration is not None:
                layer["calibrated"] = sub.calibration.calibrated
            layers.append(layer)
    return layers


def uncalibrated_causal_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(path, kernel)`` of causal OPRF/SADERF layers never calibrated: they run as PosRF."""
    return [
        (layer["path"] or "<model>", layer["kernel"])
        for layer in attention_layers(model)
        if layer["causal"] and layer["kernel"] in DATA_DEPENDENT_KERNELS and not layer["calibrated"]
    ]


def build_manifest(
    *,
    name: str,
    spec: ModelSpec,
    output_dims: dict[str, tuple],
    output_dtypes: dict[str, str],
    model: nn.Module,
    source: dict,
    files: dict[str, Path],
    validation: dict | None,
    dtype: str = "float32",
    format_entries: dict | None = None,
    text_kind: str | None = None,
) -> Manifest:
    """The manifest of an export; ``files`` maps role (``onnx``...) to written paths.

    ``dtype`` is the precision of the weights (:mod:`.precision`); input, output and state
    entries carry their own dtypes. ``format_entries`` are the formats' own entries
    (:attr:`.formats.Built.manifest`): the ONNX graph's ``opset``, ``exporter``,
    ``fused_attention`` (causal attention as ONNX Runtime's ``LinearAttention`` op) and
    ``quantization`` (an int8 graph's scheme and what was quantized); the TorchScript
    archive's ``torchscript`` (how it is called); the fixed-shape graphs' ``static`` (their
    sizes and mobile usability). Each is null (false) without its format.
    ``text_kind`` is the kind of ``files["text"]`` (:data:`favor.runtime.text.TEXT_KINDS`).
    """
    entries = dict(format_entries or {})
    inputs = {t.name: t for t in spec.inputs}
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        name=name,
        kind=spec.kind,
        versions=library_versions(),
        opset=entries.pop("opset", None),
        exporter=entries.pop("exporter", None),
        fused_attention=entries.pop("fused_attention", False),
        dtype=dtype,
        quantization=entries.pop("quantization", None),
        source=source,
        inputs=tuple(t.entry() for t in spec.inputs),
        outputs=tuple(
            TensorEntry(n, output_dtypes[n], tuple(output_dims[n])) for n in spec.output_names
        ),
        state=tuple(
            StateEntry(s.input, s.output, inputs[s.input].dtype, inputs[s.input].dims)
            for s in spec.states
        ),
        torchscript=entries.pop("torchscript", None),
        static=entries.pop("static", None),
        sequence_dim=spec.sequence_dim,
        chunk_size=spec.chunk_size,
        max_sequence_length=spec.max_length,
        text=None if text_kind is None else {"kind": text_kind},
        attention=tuple(attention_layers(model)),
        example_sizes=dict(spec.example_sizes),
        sweep=tuple(dict(case) for case in spec.sweep),
        validation=validation,
        files={
            role: FileEntry(path.name, sha256_file(path), path.stat().st_size)
            for role, path in files.items()
        },
    )
    if entries:  # a format's new entry belongs in the contract (favor.runtime.contract) first
        raise ValueError(f"the manifest has no entry {', '.join(entries)}")
    return manifest


def dumps(manifest: Manifest) -> bytes:
    """Stable bytes: the same manifest always serializes identically."""
    return (json.dumps(manifest.to_json(), indent=2) + "\n").encode()


@functools.cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def check_validation_entries(manifest: dict, source: str) -> None:
    """ExportError naming the first of :data:`VALIDATION_ENTRIES` the schema does not allow, or
    a validation case too large to run. An entry may be absent (manifests of older versions)."""
    schema = _schema()
    for key in VALIDATION_ENTRIES:
        if key not in manifest:
            continue
        validator = jsonschema.Draft202012Validator(
            schema["properties"][key] | {"$defs": schema["$defs"]}
        )
        error = jsonschema.exceptions.best_match(validator.iter_errors(manifest[key]))
        if error is not None:
            where = "".join(f"[{part!r}]" for part in error.absolute_path)
            raise ExportError(f"invalid manifest {source}: {key}{where}: {error.message}")
    for case in [manifest.get("example_sizes", {}), *manifest.get("sweep", [])]:
        for tensor in manifest["inputs"]:
            elements = math.prod(
                case.get(d, 1) if isinstance(d, str) else d for d in tensor["shape"]
            )
            if elements > MAX_CASE_ELEMENTS:
                raise ExportError(
                    f"invalid manifest {source}: validation case {case} gives input "
                    f"{tensor['name']!r} {elements} elements, more than {MAX_CASE_ELEMENTS}"
                )


def spec_from_manifest(manifest: Manifest) -> ModelSpec:
    """The :class:`ModelSpec` an export was made and validated with."""
    inputs = tuple(
        TensorSpec(
            e.name, e.shape, e.dtype, *(e.range or (0, 2)), sampler=e.sampler or Sampler.DATA
        )
        for e in manifest.inputs
    )
    return ModelSpec(
        manifest.kind,
        inputs,
        tuple(o.name for o in manifest.outputs),
        dict(manifest.example_sizes),
        tuple(dict(s) for s in manifest.sweep),
        states=tuple(StateSpec(s.input, s.output) for s in manifest.state),
        sequence_dim=manifest.sequence_dim,
        chunk_size=manifest.chunk_size,
        max_length=manifest.max_sequence_length,
    )
