"""The Python API: ``export``, ``validate_export`` and ``assert_parity``.

An export is a pipeline: options checked (:class:`.options.ExportOptions`) → model loaded →
spec (:mod:`.model_specs`) → each format built into a staging directory (:mod:`.formats`) →
validation of what was built (:mod:`.validation`) → manifest (:mod:`.manifest`) → all files
published at once (:mod:`.files`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from favor.runtime.contract import Manifest, ModelKind
from favor.runtime.manifest import (
    ManifestError,
    export_files,
    find_manifest,
    read_manifest,
    sha256_file,
)

from .checkpoint import LoadedModel, class_path, load_model, load_state_dict
from .errors import ExportError, MissingKernelError, ValidationError
from .files import check_targets, output_directory, publish, staging_dir, writing
from .formats import FORMAT_REGISTRY, Built, ExportJob, Format, get_format
from .importers import (
    FidelityReport,
    Importer,
    find_importer,
    importer_for_class,
    read_calibration,
)
from .importers.heal import heal
from .manifest import (
    build_manifest,
    check_validation_entries,
    dumps,
    spec_from_manifest,
    uncalibrated_causal_layers,
)
from .model_specs import exportable, run_example, traced_module
from .options import DEFAULT_DTYPE, DEFAULT_FORMATS, DEFAULT_OPSET, ExportOptions, check_tolerance
from .outputs import describe_outputs
from .precision import (
    budget,
    cast_model,
    cast_spec,
    files_precision,
    float32_paths,
    uncast_spec,
    upcast,
)
from .specs import ModelSpec, embedding_ranges, with_value_ranges
from .text import TextFile, check_text, find_text
from .validation import Runner, ValidationReport, validate
from .validation.runners import Expected

Progress = Callable[[str, str], None]


@dataclass
class ExportResult:
    """What :func:`export` wrote: file paths by role, the manifest, and the validation report."""

    output_dir: Path
    files: dict[str, Path]
    manifest_path: Path
    manifest: Manifest
    report: ValidationReport | None = None
    warnings: list[str] = field(default_factory=list)
    # How the imported model compares with the foreign original (None without an import).
    fidelity: FidelityReport | None = None

    @property
    def onnx_path(self) -> Path | None:
        return self.files.get("onnx")

    @property
    def torchscript_path(self) -> Path | None:
        return self.files.get("torchscript")


@dataclass(frozen=True)
class _Prepared:
    """A loaded model ready for the formats: ``module`` (cast to the export dtype) is what they
    trace, ``reference`` (float32) what validation compares with."""

    loaded: LoadedModel
    fidelity: FidelityReport | None
    reference: nn.Module
    module: nn.Module
    spec: ModelSpec
    output_dims: dict[str, tuple[int | str, ...]]
    output_dtypes: dict[str, str]
    notes: list[str]


def _silent(_stage: str, _message: str) -> None:
    pass


def export(
    model: nn.Module | str | Path,
    output_dir: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    formats: Sequence[str] | str = DEFAULT_FORMATS,
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
    import_foreign: bool = True,
    import_as: str | None = None,
    import_kwargs: Mapping[str, object] | None = None,
    calibration_data: str | Path | None = None,
    heal_steps: int = 0,
    text: str | Path | bool | None = None,
    static: bool = False,
    static_batch: int | None = None,
    prefill_chunk: int | None = None,
    static_seq: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` to every format in ``formats``, validate the files, write a manifest.

    Files appear only when everything, validation included, succeeded, and all at once: a
    failure leaves ``output_dir`` as it was (a previous export of the same name intact), or
    absent if it was created. Every option is checked before the model is read.

    Args:
        model: an ``nn.Module``, or a path to a favor checkpoint
            (:func:`~favor.exporter.save_checkpoint`), a TorchScript archive, or (with
            ``trust_pickle``) a pickled module.
        output_dir: where to write; default beside the model file (required for a module).
        opset: the ONNX opset of the graph (14, or 17 with the dynamo exporter, up to the highest
            the installed onnxruntime runs).
        name: base name of the files (``NAME.onnx``, ``NAME.torchscript.pt``,
            ``NAME.manifest.json``); default the model file's stem or the class name.
        formats: names from :data:`.formats.FORMAT_REGISTRY` (``"onnx"``, ``"torchscript"``), as
            a sequence or a comma-separated string; default :data:`.options.DEFAULT_FORMATS`.
        exporter: torch's ONNX exporter, ``"dynamo"`` or ``"torchscript"``; default dynamo, and
            torchscript for a TorchScript archive.
        inputs: for models without a registered spec, one ``NAME:DIMS:DTYPE[:LOW..HIGH]``
            declaration per ``forward`` argument, in order (e.g. ``"x:batch,seq=64,256:float32"``).
        validate_outputs: compare every format with PyTorch over the spec's sweep of batch sizes
            and lengths (:mod:`.validation`); a miss raises :class:`ValidationError`.
        atol, rtol: elementwise tolerances; default per output dtype
            (:data:`.validation.TOLERANCES`), or the half-precision budget
            (:data:`.precision.BUDGETS`) with ``dtype``.
        allow_modules: top-level packages whose classes a checkpoint may name, beyond ``favor``.
        trust_pickle: allow loading a pickled module, which runs code from the file.
        external_data: store ONNX weights in ``NAME.onnx.data``; default above 1 GiB.
        dtype: weights' precision, ``float32``, ``float16`` or ``bfloat16`` (or ``fp32``,
            ``fp16``, ``bf16``); attention internals and the LM state stay float32, and the
            export is held to :data:`.precision.BUDGETS` against the float32 model.
        fused_attention: write causal attention as ONNX Runtime's fused ``LinearAttention`` op
            instead of the portable chunked graph (dynamo exporter only; PyTorch and TorchScript
            are unaffected; see :mod:`.linear_attention`).
        quantize: ``"int8"`` quantizes the ONNX graph's weight MatMuls (dynamic int8, attention
            core in float; :mod:`.quantize`), held to the int8 parity budget
            (:mod:`.quant_budget`); the float graph it came from is validated but not written,
            and the TorchScript archive stays float.
        int8_scheme: one of :data:`.quantize.INT8_SCHEMES` (default: the one that holds on
            every CPU); only with ``quantize``.
        import_foreign: convert a model from another implementation that an importer
            recognizes (:mod:`.importers`, e.g. performer-pytorch's ``PerformerLM``) into its
            favor.ops equivalent first, and measure how close it is (``result.fidelity``);
            False exports the module as it is.
        import_as: with a bare ``state_dict`` file as ``model``: the class it belongs to (e.g.
            ``performer_pytorch.PerformerLM``), rebuilt from ``import_kwargs`` without the
            foreign package.
        import_kwargs: that class's constructor arguments.
        calibration_data: token ids (``.npy``) or text (byte vocabularies) to measure an
            imported language model's NLL and top-1 agreement on.
        heal_steps: distill an imported causal LM from the original on ``calibration_data``
            for this many steps (:mod:`.importers.heal`) before exporting it; the fidelity
            report then holds both, before and after.
        text: how apps turn text into the model's token ids, carried in the export
            (:mod:`.text`): a character vocabulary (a JSON list of characters, token id =
            index) or a Hugging Face ``tokenizer.json``. None looks beside the model file for
            ``NAME.tokenizer.json``, ``NAME.vocab.json``, ``tokenizer.json`` or ``vocab.json``
            and takes the first that fits the model's vocabulary; False carries none.
        static: also write fixed-shape graphs for mobile NPUs (:mod:`.formats.static`): a
            causal LM's decode step and prefill chunk sharing one weights file, or an encoder's
            graph at a fixed length; same as ``"static"`` in ``formats``.
        static_batch: the static graphs' batch (default 1).
        prefill_chunk: a causal LM's static prefill length (default 64).
        static_seq: an encoder's static length (default the model's longest sequence).
        progress: called as ``progress(stage, message)`` at each step.

    Returns:
        :class:`ExportResult`: the published files by role (``onnx``, ``onnx_data``,
        ``torchscript``, ``text``), the manifest and its path, the validation report (None without
        validation), and warnings (e.g. uncalibrated causal layers).

    Raises:
        ExportError: bad options or input, an unexportable model, or an unwritable output.
        ValidationError: a format does not match PyTorch (``error.report`` holds the report).
    """
    options = ExportOptions(
        opset=opset, name=name, formats=formats, exporter=exporter, inputs=inputs,
        validate=validate_outputs, atol=atol, rtol=rtol, allow_modules=allow_modules,
        trust_pickle=trust_pickle, external_data=external_data, dtype=dtype,
        fused_attention=fused_attention, quantize=quantize, int8_scheme=int8_scheme,
        import_foreign=import_foreign, import_as=import_as, import_kwargs=import_kwargs,
        calibration_data=None if calibration_data is None else Path(calibration_data),
        heal_steps=heal_steps, text=text, static=static, static_batch=static_batch,
        prefill_chunk=prefill_chunk, static_seq=static_seq,
    )  # fmt: skip
    say = progress or _silent
    say("load", str(model) if not isinstance(model, nn.Module) else type(model).__name__)
    if options.import_as is not None:
        if options.calibration_data is not None:
            raise ExportError(
                "--calibration-data compares the import with the original model, which "
                "--import-as never builds"
            )
        loaded, source_path = _rebuilt(model, options), Path(model)
    else:
        loaded, source_path = _load(model, options.allow_modules, options.trust_pickle)
    loaded, fidelity = _imported(loaded, options, say)
    chosen_exporter = options.exporter_for(loaded.source)
    formats_ = [get_format(f).from_options(options, chosen_exporter) for f in options.formats]
    candidates = find_text(options.text, source_path)
    out, name = _destination(options, loaded, source_path, output_dir, formats_, candidates)
    prepared = _prepare(loaded, fidelity, options, say)
    text_file = _chosen_text(candidates, prepared.spec, say)
    with output_directory(out) as out, staging_dir(out) as stage:
        job = ExportJob(prepared.module, prepared.spec, prepared.output_dims, name, stage, out, say)
        built = [f.build(job) for f in formats_]
        report = None
        if options.validate:
            runners = [r for b in built for r in b.runners]
            report = _validate(
                prepared.reference, prepared.spec, runners, options.dtype, options.atol,
                options.rtol, say,
            )  # fmt: skip
        files = {role: path for b in built for role, path in b.files.items()}
        if text_file is not None:
            files["text"] = stage / text_file.file_name(name)
            shutil.copyfile(text_file.path, files["text"])
        manifest = _manifest(name, prepared, options, built, files, report, text_file)
        manifest_name = f"{name}.manifest.json"
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
        prepared.notes,
        fidelity,
    )


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


def _rebuilt(model: nn.Module | str | Path, options: ExportOptions) -> LoadedModel:
    """The state_dict route: ``options.import_as(**options.import_kwargs)`` rebuilt in favor.ops
    with the weights of the bare state_dict file ``model``."""
    if isinstance(model, nn.Module):
        raise ExportError("import_as rebuilds a model from a state_dict file, not a module")
    kwargs = dict(options.import_kwargs or {})
    state_dict = load_state_dict(model)
    importer = importer_for_class(options.import_as)
    module = importer.from_state_dict(options.import_as, kwargs, state_dict)
    return LoadedModel(module.eval(), "state-dict", options.import_as, kwargs)


def _imported(
    loaded: LoadedModel, options: ExportOptions, say: Progress
) -> tuple[LoadedModel, FidelityReport | None]:
    """``loaded`` with a foreign model converted to favor.ops, and the fidelity of that."""
    if not options.import_foreign or loaded.source == "state-dict":
        return loaded, None
    importer = find_importer(loaded.module)
    if importer is None:
        if options.calibration_data is not None:
            raise ExportError(
                "--calibration-data measures an imported model, and no importer recognizes "
                f"{loaded.class_path or class_path(loaded.module)}"
            )
        return loaded, None
    original = loaded.module
    imported = importer.convert(original).eval()
    say("import", f"{class_path(original)} ({importer.name}) -> {class_path(imported)}")
    calibration = (
        None
        if options.calibration_data is None
        else read_calibration(options.calibration_data, imported)
    )
    if calibration is not None:
        importer.calibrate(original, imported, calibration)
    fidelity = importer.fidelity(original, imported, calibration)
    if calibration is not None:
        fidelity.calibration = {
            "sha256": sha256_file(options.calibration_data),
            "tokens": int(calibration.size),
        }
    say("fidelity", fidelity.summary())
    if options.heal_steps:
        imported, fidelity = _healed(
            importer, original, imported, calibration, fidelity, options, say
        )
    if fidelity.exact and fidelity.misses:
        raise ExportError(
            f"the imported model does not reproduce {fidelity.original}: "
            f"{'; '.join(fidelity.misses)}; export the original with --no-import"
        )
    return LoadedModel(imported, loaded.source, loaded.class_path, loaded.config), fidelity


def _healed(
    importer: Importer,
    original: nn.Module,
    imported: nn.Module,
    calibration: np.ndarray,
    before: FidelityReport,
    options: ExportOptions,
    say: Progress,
) -> tuple[nn.Module, FidelityReport]:
    """``imported`` distilled from ``original`` for ``options.heal_steps``, and its fidelity."""
    if before.exact or not hasattr(imported, "vocab_size"):
        raise ExportError(
            "--heal-steps heals causal language models, whose import cannot be exact; "
            f"{before.imported} is not one"
        )
    max_length = imported.config().get("max_seq_len", calibration.size)
    healed = heal(
        original, imported, calibration, options.heal_steps, max_length=max_length,
        progress=lambda step, kl: say("heal", f"step {step}/{options.heal_steps}: KL {kl:.4g}"),
    )  # fmt: skip
    after = importer.fidelity(original, healed, calibration)
    after.heal_steps, after.before_healing = options.heal_steps, before
    after.calibration = before.calibration
    say("fidelity", f"after healing: {after.summary()}")
    return healed, after


def _destination(
    options: ExportOptions,
    loaded: LoadedModel,
    source_path: Path | None,
    output_dir: str | Path | None,
    formats: list[Format],
    texts: list[TextFile],
) -> tuple[Path, str]:
    """The output directory and base name, after checking that nothing is in the way."""
    if output_dir is None:
        if source_path is None:
            raise ExportError("output_dir is required when exporting a module object")
        output_dir = source_path.parent
    name = options.name or (
        source_path.stem if source_path else type(loaded.module).__name__.lower()
    )
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"name {name!r} cannot be used as a file name")
    names = [n for f in formats for n in f.file_names(name).values()]
    names += sorted({text.file_name(name) for text in texts})
    check_targets([Path(output_dir) / n for n in [*names, f"{name}.manifest.json"]], source_path)
    return Path(output_dir), name


def _prepare(
    loaded: LoadedModel, fidelity: FidelityReport | None, options: ExportOptions, say: Progress
) -> _Prepared:
    """Spec the model, cast it to the export dtype, and find its outputs' dims."""
    reference, spec = exportable(loaded.module, list(options.inputs))
    module, spec = cast_model(reference, options.dtype), cast_spec(spec, options.dtype)
    if options.dtype != "float32":
        kept = len(float32_paths(module))
        say("precision", f"{options.dtype} weights; {kept} attention/rotary modules stay float32")
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
    if fidelity is not None and not fidelity.exact and fidelity.misses:
        notes.append(
            f"the imported causal model misses its fidelity targets ({'; '.join(fidelity.misses)})"
        )
    for note in notes:
        say("warning", note)
    dims, dtypes = describe_outputs(module, spec)
    return _Prepared(loaded, fidelity, reference, module, spec, dims, dtypes, notes)


def _chosen_text(texts: list[TextFile], spec: ModelSpec, say: Progress) -> TextFile | None:
    """The first of ``texts`` that fits the model. Files found beside the model that do not
    fit are left out with a message; a given one is an ExportError."""
    for text in texts:
        try:
            read = check_text(text, spec)
        except ExportError as error:
            if not text.found:
                raise
            say("text", f"left out: {error}")
            continue
        say("text", f"{text.path} ({text.kind}, {read.size} tokens)")
        return text
    return None


def _expected(reference: nn.Module, dtype: str) -> Expected:
    """PyTorch's outputs: the float32 ``reference`` model, on half inputs upcast for a half
    export (:mod:`.precision`)."""

    def expect(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = reference(*(upcast(inputs) if dtype != "float32" else inputs))
        return out if isinstance(out, tuple) else (out,)

    return expect


def _validate(
    reference: nn.Module,
    spec: ModelSpec,
    runners: Sequence[Runner] | Callable[[], Sequence[Runner]],
    dtype: str,
    atol: float | None,
    rtol: float | None,
    say: Progress,
) -> ValidationReport:
    """Validate ``runners`` against ``reference``; ``atol``/``rtol`` default to ``dtype``'s.

    ``runners`` may be a callable that loads them: a kernel missing from ONNX Runtime shows up
    when a runner loads its file.
    """
    default_atol, default_rtol = budget(dtype)
    try:
        loaded = runners() if callable(runners) else runners
        report = validate(
            spec, _expected(reference, dtype), loaded,
            atol=default_atol if atol is None else atol,
            rtol=default_rtol if rtol is None else rtol,
            progress=lambda message: say("validate", message),
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
    name: str,
    prepared: _Prepared,
    options: ExportOptions,
    built: list[Built],
    files: dict[str, Path],
    report: ValidationReport | None,
    text: TextFile | None,
) -> Manifest:
    loaded = prepared.loaded
    entries = {key: value for b in built for key, value in b.manifest.items()}
    if entries.get("quantization") is not None:
        # The int8 graph is the ONNX format's, and every format built from it holds it too.
        entries["quantization"]["formats"] = [
            name
            for name in options.formats
            if name == "onnx" or "onnx" in get_format(name).requires
        ]
    source = {"format": loaded.source, "class": loaded.class_path, "config": loaded.config}
    if prepared.fidelity is not None:
        source["imported"] = {"class": class_path(loaded.module), **prepared.fidelity.to_json()}
    return build_manifest(
        name=name, spec=prepared.spec, output_dims=prepared.output_dims,
        output_dtypes=prepared.output_dtypes, model=loaded.module,
        source=source, files=files, validation=None if report is None else report.to_json(),
        dtype=options.dtype, format_entries=entries, text_kind=text and text.kind,
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
    import_foreign: bool = True,
    calibration_data: str | Path | None = None,
    progress: Progress | None = None,
) -> ValidationReport:
    """Re-run export-time validation of an existing export against ``model``.

    Nothing the check depends on is read from the export under test: the sha256 of every file
    is checked first; tolerances are ``atol``/``rtol`` or the project's defaults for the
    dtype the files hold (:func:`.precision.budget`); an int8 graph is held to the budget of
    the recorded scheme (:data:`.quantize.INT8_SCHEMES`); integer inputs are drawn over the
    whole range of the model's embedding that reads them. The cases are the manifest's own
    (example sizes and sweep), bounded in size.

    Args:
        model: the PyTorch model the export came from, as for :func:`export`.
        export_dir: the export directory, its ``.onnx`` file or its manifest.
        name: which export, when the directory holds several.
        atol, rtol: elementwise tolerances, as for :func:`export`.
        allow_modules, trust_pickle: how ``model`` may be loaded, as for :func:`export`.
        import_foreign: convert a foreign model as :func:`export` did (the export holds the
            converted model); False for exports made with ``import_foreign=False``.
        calibration_data: the file an imported model was calibrated on at export (required
            then, and checked against the sha256 the manifest records).
        progress: called as ``progress(stage, message)`` at each step.

    Returns:
        The :class:`ValidationReport`; it does not raise on a mismatch (see
        :func:`assert_parity`).

    Raises:
        ExportError: a missing, altered or inconsistent export, or a model that cannot load.
    """
    check_tolerance("atol", atol)
    check_tolerance("rtol", rtol)
    say = progress or _silent
    try:
        manifest_path = find_manifest(Path(export_dir), name)
        say("load", str(manifest_path))
        raw = read_manifest(manifest_path)
        # The schema's word on the entries validation reads, before the typed checks.
        check_validation_entries(raw, manifest_path.name)
        manifest = Manifest.from_json(raw, manifest_path.name)
    except ManifestError as error:
        raise ExportError(str(error)) from None
    files = export_files(manifest_path, manifest)
    dtype = manifest.dtype
    _check_recorded_precision(dtype, manifest.quantization is not None, files, manifest_path.name)
    loaded, _ = _load(model, allow_modules, trust_pickle)
    importer = find_importer(loaded.module) if import_foreign else None
    module = loaded.module
    if importer is not None:
        module = importer.convert(loaded.module)
        imported = manifest.source.get("imported") or {}
        if "healed" in imported:
            raise ExportError(
                f"{manifest_path.name}'s model was healed (distilled for "
                f"{imported['healed']['steps']} steps) at export, so no import of the original "
                "reproduces it"
            )
        recorded = imported.get("calibration")
        if recorded is not None:
            # The import was tuned on the user's data: the same data gives the same model.
            ids = _same_calibration(calibration_data, recorded, manifest_path.name, module)
            importer.calibrate(loaded.module, module, ids)
    module = traced_module(module)
    spec = spec_from_manifest(manifest)
    model_spec = uncast_spec(spec, dtype)  # what the float32 model takes
    if spec.kind is ModelKind.MODULE:
        run_example(module, model_spec)  # an ExportError if forward rejects the recorded inputs
    spec = with_value_ranges(spec, embedding_ranges(module, model_spec))
    formats = [f for cls in FORMAT_REGISTRY.values() if (f := cls.from_manifest(manifest))]
    return _validate(
        module, spec, lambda: [r for f in formats for r in f.runners(files, spec)], dtype, atol,
        rtol, say,
    )  # fmt: skip


def _same_calibration(
    path: str | Path | None, recorded: dict, source: str, model: nn.Module
) -> np.ndarray:
    """The calibration ids at ``path``, once they are shown to be the ones ``recorded``."""
    if path is None:
        raise ExportError(
            f"{source}'s model was calibrated on data at export (sha256 {recorded['sha256']}): "
            "pass the same file with --calibration-data"
        )
    if sha256_file(Path(path)) != recorded["sha256"]:
        raise ExportError(
            f"--calibration-data {path} is not the file {source}'s model was calibrated on "
            f"(sha256 {recorded['sha256']})"
        )
    return read_calibration(Path(path), model)


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


def assert_parity(
    model: nn.Module | str | Path, export_dir: str | Path, *, name: str | None = None, **kwargs
) -> ValidationReport:
    """pytest-friendly :func:`validate_export`: raise ``AssertionError`` with the per-output
    table when parity fails.

    Args:
        model, export_dir, name: as for :func:`validate_export`.
        **kwargs: the other keywords of :func:`validate_export` (``atol``, ``rtol``,
            ``allow_modules``, ``trust_pickle``, ``progress``).

    Returns:
        The passing :class:`ValidationReport`.
    """
    report = validate_export(model, export_dir, name=name, **kwargs)
    if not report.passed:
        raise AssertionError(f"exported model does not match PyTorch:\n{report.table()}")
    return report
