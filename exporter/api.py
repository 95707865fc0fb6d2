"""The Python API: ``export``, ``validate_export`` and ``assert_parity``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from favor.runtime.manifest import ManifestError, export_files, find_manifest, read_manifest

from .checkpoint import LoadedModel, load_model
from .errors import ExportError, MissingKernelError, ValidationError
from .files import check_targets, output_directory, publish, staging_dir, writing
from .known_models import exportable
from .manifest import (
    build_manifest,
    check_validation_entries,
    dumps,
    spec_from_manifest,
    uncalibrated_causal_layers,
)
from .onnx_graph import EXPORTERS, build_onnx, check_opset, describe_outputs, save_onnx
from .precision import budget, cast_model, cast_spec, files_precision, float32_paths, parse_dtype
from .quant_budget import INT8_BUDGET, ParityBudget
from .quantize import INT8_SCHEMES, QuantizedGraph, int8_settings, parse_quantize, quantize_int8
from .specs import ModelSpec, embedding_ranges, with_value_ranges
from .torchscript import build_torchscript
from .validation import ValidationReport, validate

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
# Chosen by measurement (`python -m benchmarks.exporters`, README "Choosing the ONNX exporter"):
# the dynamo exporter's graphs have a third of the nodes and run about 2x faster in ONNX Runtime,
# for prefill and decode alike. It takes several times longer to export, which a user pays once.
DEFAULT_EXPORTER = "dynamo"
DEFAULT_DTYPE = "float32"

Progress = Callable[[str, str], None]


@dataclass
class ExportResult:
    """What :func:`export` wrote: file paths by role, the manifest, and the validation report."""

    output_dir: Path
    files: dict[str, Path]
    manifest_path: Path
    manifest: dict
    report: ValidationReport | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def onnx_path(self) -> Path | None:
        return self.files.get("onnx")

    @property
    def torchscript_path(self) -> Path | None:
        return self.files.get("torchscript")


def _silent(_stage: str, _message: str) -> None:
    pass


def _load(
    model: nn.Module | str | Path, allow_modules: Sequence[str], trust_pickle: bool
) -> tuple[LoadedModel, Path | None]:
    if isinstance(model, nn.Module):
        return LoadedModel(
            model.eval(), "module", f"{type(model).__module__}.{type(model).__qualname__}"
        ), None
    if isinstance(model, (str, Path)):
        path = Path(model)
        return load_model(path, allow_modules=tuple(allow_modules), trust_pickle=trust_pickle), path
    raise ExportError(f"model must be an nn.Module or a path, got {type(model).__name__}")


def _parse_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ExportError(
            f"format must be a comma-separated subset of {', '.join(FORMATS)}, "
            f"got {','.join(items)!r}"
        )
    return tuple(f for f in FORMATS if f in items)


def _choose_exporter(loaded: LoadedModel, exporter: str | None) -> str:
    if exporter is not None and exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if loaded.source == "torchscript":
        if exporter == "dynamo":
            raise ExportError(
                "a TorchScript archive can only be exported with --exporter torchscript "
                "(torch.export cannot read TorchScript)"
            )
        return "torchscript"
    return exporter or DEFAULT_EXPORTER


def export(
    model: nn.Module | str | Path,
    output_dir: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    formats: Sequence[str] | str = FORMATS,
    exporter: str | None = None,
    inputs: Sequence[str] = (),
    validate_outputs: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    allow_modules: Sequence[str] = (),
    trust_pickle: bool = False,
    external_data: bool | None = None,
    dtype: str = DEFAULT_DTYPE,
    fused_attention: bool = False,
    quantize: str | None = None,
    int8_scheme: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a module, or a path to a checkpoint/TorchScript/pickle) and validate it.

    Writes ``<name>.onnx``, ``<name>.torchscript.pt`` and ``<name>.manifest.json`` into
    ``output_dir`` (default: beside the input file). Files appear only when everything,
    validation included, succeeded, and all at once: a failure leaves ``output_dir`` as it was
    (a previous export of the same name intact), or absent if it was created. Raises
    :class:`ExportError` for bad input and :class:`ValidationError` when the exported files do
    not match PyTorch.

    ``dtype`` (``float32``, ``float16``, ``bfloat16``, or ``fp32``/``fp16``/``bf16``) casts the
    weights and float inputs; attention internals and state stay float32, and validation holds
    the result to :data:`.precision.BUDGETS` against the float32 model (see :mod:`.precision`).

    ``fused_attention`` writes causal attention as ONNX Runtime's fused ``LinearAttention`` op
    instead of the portable chunked graph (dynamo exporter only; see
    :mod:`.linear_attention`). PyTorch and TorchScript are unaffected.

    ``quantize="int8"`` quantizes the ONNX graph's weight MatMuls (dynamic int8, attention
    core in float; see :mod:`.quantize`) and holds it to the int8 parity budget
    (:mod:`.quant_budget`); the float graph it came from is validated as usual but not
    written, and the TorchScript archive stays float. ``int8_scheme`` names one of
    :data:`.quantize.INT8_SCHEMES` (default: the one that holds on every CPU).
    """
    say = progress or _silent
    quantize = parse_quantize(quantize)
    settings = int8_settings(int8_scheme)
    dtype = parse_dtype(dtype)
    chosen_formats = _parse_formats(formats)
    say("load", str(model) if not isinstance(model, nn.Module) else type(model).__name__)
    loaded, source_path = _load(model, allow_modules, trust_pickle)
    chosen_exporter = _choose_exporter(loaded, exporter)
    if "onnx" in chosen_formats:
        check_opset(opset, chosen_exporter)
    elif fused_attention:
        raise ExportError("--fused-attention changes the ONNX graph, and --format has no onnx")
    elif quantize:
        raise ExportError("--quantize int8 quantizes the ONNX graph, and --format has no onnx")
    if quantize and dtype != "float32":
        raise ExportError(f"--quantize int8 needs float32 weights, got --dtype {dtype}")
    if output_dir is None:
        if source_path is None:
            raise ExportError("output_dir is required when exporting a module object")
        output_dir = source_path.parent
    name = name or (source_path.stem if source_path else type(loaded.module).__name__.lower())
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"name {name!r} cannot be used as a file name")
    names = _file_names(name)
    check_targets([Path(output_dir) / n for n in names.values()], source_path)
    reference, spec = exportable(loaded.module, list(inputs))
    module, spec = cast_model(reference, dtype), cast_spec(spec, dtype)
    if dtype != "float32":
        kept = len(float32_paths(module))
        say("precision", f"{dtype} weights; {kept} attention/rotary modules stay float32")
    default_atol, default_rtol = budget(dtype)  # None for float32: validation's per-dtype defaults
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    say(
        "model",
        f"{loaded.source} {loaded.class_path or type(loaded.module).__name__}: {spec.kind}, "
        f"inputs {', '.join(t.name for t in spec.inputs)}",
    )
    notes = [
        f"{path}: causal {layer_kernel} layer was never calibrated and runs as PosRF; "
        "calibrate it with favor.ops.calibrating before saving"
        for path, layer_kernel in uncalibrated_causal_layers(loaded.module)
    ]
    for note in notes:
        say("warning", note)
    dims, dtypes = describe_outputs(module, spec)
    quantized: QuantizedGraph | None = None
    float_onnx: Path | None = None  # an int8 export's float graph: validated, never published
    with output_directory(Path(output_dir)) as out, staging_dir(out) as stage:
        files: dict[str, Path] = {}
        if "onnx" in chosen_formats:
            say("export", f"ONNX opset {opset} with torch's {chosen_exporter} exporter")
            graph = build_onnx(
                module, spec, dims, opset=opset, exporter=chosen_exporter,
                fused_attention=fused_attention,
            )  # fmt: skip
            say("check", "onnx.checker (full check) and shape inference")
            onnx_name = f"{name}.float32.onnx" if quantize else names["onnx"]
            with writing(out / onnx_name):
                written = save_onnx(graph, stage / onnx_name, external_data=external_data)
            if quantize:
                float_onnx, quantized = stage / written[0], quantize_int8(graph, module, settings)
                say("quantize", quantized.summary())
                with writing(out / names["onnx"]):
                    written = save_onnx(
                        quantized.model, stage / names["onnx"], external_data=external_data
                    )
            files["onnx"] = stage / written[0]
            if len(written) > 1:
                files["onnx_data"] = stage / written[1]
        if "torchscript" in chosen_formats:
            say("trace", "TorchScript")
            with writing(out / names["torchscript"]):
                build_torchscript(module, spec, stage / names["torchscript"])
            files["torchscript"] = stage / names["torchscript"]
        report = None
        if validate_outputs:
            report = _validate(
                reference, spec, files, atol, rtol, dtype, say,
                budget=quantized.settings.budget if quantized else None, float_onnx=float_onnx,
            )  # fmt: skip
        manifest = _manifest(
            name,
            spec,
            dims,
            dtypes,
            loaded,
            opset if "onnx" in chosen_formats else None,
            chosen_exporter,
            files,
            report,
            dtype,
            fused_attention,
            quantized.to_json() if quantized else None,
        )
        manifest_name = names["manifest"]
        with writing(out / manifest_name):
            (stage / manifest_name).write_bytes(dumps(manifest))
        if report is not None and not report.passed:
            raise ValidationError(
                "the exported model does not match PyTorch; nothing was written", report
            )
        say("write", str(out))
        publish(stage, out, [p.name for p in files.values()] + [manifest_name])
    return ExportResult(
        out,
        {role: out / p.name for role, p in files.items()},
        out / manifest_name,
        manifest,
        report,
        notes,
    )


def _file_names(name: str) -> dict[str, str]:
    """The files an export named ``name`` may publish, by role."""
    return {
        "onnx": f"{name}.onnx",
        "onnx_data": f"{name}.onnx.data",  # save_onnx's name for external data
        "torchscript": f"{name}.torchscript.pt",
        "manifest": f"{name}.manifest.json",
    }


def _validate(
    reference: nn.Module, spec: ModelSpec, files, atol, rtol, dtype: str, say: Progress,
    *, budget: ParityBudget | None = None, float_onnx: Path | None = None,
) -> ValidationReport:  # fmt: skip
    """Validate the written files against ``reference``, the float32 model for half exports.

    With ``budget`` ``files["onnx"]`` is an int8 graph, held to that parity budget;
    ``float_onnx``, the graph it was quantized from (only at export time), gets the usual
    elementwise checks.
    """
    onnx_path, quantized_path = files.get("onnx"), None
    if budget is not None:
        onnx_path, quantized_path = float_onnx, onnx_path
    try:
        report = validate(
            reference, spec,
            onnx_path=onnx_path, torchscript_path=files.get("torchscript"),
            atol=atol, rtol=rtol, progress=lambda message: say("validate", message),
            upcast_inputs=dtype != "float32", quantized_onnx_path=quantized_path,
            budget=budget,
        )  # fmt: skip
    except MissingKernelError as error:
        if dtype != "bfloat16":
            raise
        raise ExportError(
            f"--dtype bfloat16: {error}; bfloat16 ONNX graphs are for CUDA: export with "
            "--format torchscript, or --no-validate to write the ONNX graph unvalidated"
        ) from None
    if dtype != "float32":
        report.reference = f"{dtype} export against the float32 PyTorch model"
    return report


def _manifest(
    name, spec: ModelSpec, dims, dtypes, loaded: LoadedModel, opset, exporter, files, report,
    dtype, fused_attention, quantization,
) -> dict:  # fmt: skip
    return build_manifest(
        name=name, spec=spec, output_dims=dims, output_dtypes=dtypes, model=loaded.module,
        source={"format": loaded.source, "class": loaded.class_path, "config": loaded.config},
        opset=opset, exporter=exporter if "onnx" in files else None, files=files,
        validation=None if report is None else report.to_json(), dtype=dtype,
        fused_attention=fused_attention, quantization=quantization,
    )  # fmt: skip


def validate_export(
    model: nn.Module | str | Path,
    export_dir: str | Path,
    *,
    name: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    allow_modules: Sequence[str] = (),
    trust_pickle: bool = False,
    progress: Progress | None = None,
) -> ValidationReport:
    """Re-run export-time validation of an existing export against ``model``.

    Checks the manifest's sha256 of every file first. Nothing the check depends on is read
    from the export under test: tolerances are ``atol``/``rtol`` or the project's defaults for
    the recorded dtype (:func:`.precision.budget`), an int8 graph is held to the budget of the
    recorded scheme (:data:`.quantize.INT8_SCHEMES`), and integer inputs are drawn over the
    whole range of the model's embedding that reads them. Returns the report; it does not
    raise on a mismatch.
    """
    say = progress or _silent
    try:
        manifest_path = find_manifest(Path(export_dir), name)
        say("load", str(manifest_path))
        manifest = read_manifest(manifest_path)
    except ManifestError as error:
        raise ExportError(str(error)) from None
    check_validation_entries(manifest, manifest_path.name)
    files = export_files(manifest_path, manifest)
    dtype = manifest.get("dtype", "float32")  # manifests from before --dtype are float32
    quantization = manifest.get("quantization")
    _check_recorded_precision(dtype, quantization is not None, files, manifest_path.name)
    loaded, _ = _load(model, allow_modules, trust_pickle)
    declared = (
        [_declaration(i, dtype) for i in manifest["inputs"]] if manifest["kind"] == "module" else []
    )
    module, model_spec = exportable(loaded.module, declared)
    spec = with_value_ranges(spec_from_manifest(manifest), embedding_ranges(module, model_spec))
    default_atol, default_rtol = budget(dtype)
    return _validate(
        module, spec, files,
        default_atol if atol is None else atol, default_rtol if rtol is None else rtol,
        dtype, say, budget=None if quantization is None else _int8_budget(quantization),
    )  # fmt: skip


def _check_recorded_precision(
    dtype: str, quantized: bool, files: dict[str, Path], source: str
) -> None:
    """ExportError unless the manifest's dtype and quantization are what its files hold: they
    choose the tolerances, and a manifest is not trusted."""
    try:
        found_dtype, found_quantized = files_precision(files)
    except Exception:  # a file that does not load: validation reports it as a failure
        return
    said = f"{dtype}{' int8' if quantized else ''}"
    found = f"{found_dtype}{' int8' if found_quantized else ''}"
    if said != found:
        raise ExportError(
            f"{source} records {said} weights, but its files hold {found} weights: the manifest "
            "does not describe this export"
        )


def _int8_budget(quantization: dict) -> ParityBudget:
    """The project's budget for the int8 scheme the manifest names, never one stored in it."""
    settings = INT8_SCHEMES.get(quantization.get("scheme"))
    return INT8_BUDGET if settings is None else settings.budget


def _declaration(entry: dict, dtype: str) -> str:
    # A half export's float inputs were declared float32 and cast: the model takes float32.
    declared = "float32" if entry["dtype"] == dtype != "float32" else entry["dtype"]
    text = f"{entry['name']}:{','.join(map(str, entry['shape']))}:{declared}"
    return text + (f":{entry['range'][0]}..{entry['range'][1]}" if "range" in entry else "")


def assert_parity(
    model: nn.Module | str | Path, export_dir: str | Path, *, name: str | None = None, **kwargs
) -> ValidationReport:
    """pytest-friendly: raise ``AssertionError`` with the per-output table when parity fails."""
    report = validate_export(model, export_dir, name=name, **kwargs)
    if not report.passed:
        raise AssertionError(f"exported model does not match PyTorch:\n{report.table()}")
    return report
