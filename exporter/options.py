"""``ExportOptions``: every choice an export takes, checked together before any file is read.

Conflicts that do not depend on the model (``--quantize int8`` with ``--dtype fp16``, fusion
without an ONNX graph, an opset no exporter writes) are found here, so a bad command fails in
milliseconds instead of after loading and tracing a large model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError
from .formats import FORMAT_REGISTRY
from .formats.base import check_requires
from .importers import importer_for_class
from .onnx_graph import EXPORTERS, MIN_OPSET_BY_EXPORTER, check_opset
from .precision import parse_dtype
from .quantize import QuantizationSettings, int8_settings, parse_quantize
from .specs import declared_spec

DEFAULT_OPSET = 17
# Chosen by measurement (`python -m benchmarks.exporters`, README "Choosing the ONNX exporter"):
# the dynamo exporter's graphs have a third of the nodes and run about 2x faster in ONNX Runtime,
# for prefill and decode alike. It takes several times longer to export, which a user pays once.
DEFAULT_EXPORTER = "dynamo"
DEFAULT_DTYPE = "float32"
# What an export writes unless told otherwise; other registered formats are opt-in.
DEFAULT_FORMATS = ("onnx", "torchscript")


@dataclass(frozen=True)
class ExportOptions:
    """The options of :func:`favor.exporter.export`, normalized and checked on construction.

    Raises :class:`ExportError` naming the first bad value or conflict. The fields are those of
    :func:`~favor.exporter.export` (see there); ``formats`` may be given as a comma-separated
    string and ``dtype`` by its short name (``fp16``), and both are stored normalized.
    """

    opset: int = DEFAULT_OPSET
    name: str | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    exporter: str | None = None
    inputs: tuple[str, ...] = ()
    validate: bool = True
    atol: float | None = None
    rtol: float | None = None
    allow_modules: tuple[str, ...] = ()
    trust_pickle: bool = False
    external_data: bool | None = None
    dtype: str = DEFAULT_DTYPE
    fused_attention: bool = False
    quantize: str | None = None
    int8_scheme: str | None = None
    import_foreign: bool = True
    import_as: str | None = None
    import_kwargs: Mapping[str, object] | None = None
    calibration_data: Path | None = None
    heal_steps: int = 0
    text: str | Path | bool | None = None
    static: bool = False
    static_batch: int | None = None
    prefill_chunk: int | None = None
    static_seq: int | None = None

    def __post_init__(self) -> None:
        # Frozen: the normalized values are set once, here.
        object.__setattr__(self, "formats", _parse_formats(self.formats))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "allow_modules", tuple(self.allow_modules))
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        object.__setattr__(self, "quantize", parse_quantize(self.quantize))
        if self.name is not None and (not self.name or "/" in self.name or self.name[0] == "."):
            raise ExportError(f"name {self.name!r} cannot be used as a file name")
        if self.exporter is not None and self.exporter not in EXPORTERS:
            raise ExportError(
                f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}"
            )
        if not (self.text is None or isinstance(self.text, (bool, str, Path))):
            raise ExportError(f"text must be a path, False or None, got {type(self.text).__name__}")
        if isinstance(self.text, (str, Path)) and not Path(self.text).is_file():
            raise ExportError(f"--text {self.text}: no such file")
        check_tolerance("atol", self.atol)
        check_tolerance("rtol", self.rtol)
        if self.inputs:
            declared_spec(list(self.inputs), ("output",))  # raises on a bad declaration
        # After the normalization above: the static checks read the dtype's canonical name.
        self._check_static_options()
        check_requires(self.formats)
        self._check_onnx_options()
        self._check_import_options()

    def _check_static_options(self) -> None:
        """``--static`` and ``--format static`` are one choice; its sizes need it."""
        if self.static or "static" in self.formats:
            object.__setattr__(self, "static", True)
            object.__setattr__(self, "formats", _parse_formats([*self.formats, "static"]))
        for flag, value, least in (
            ("--static-batch", self.static_batch, 1),
            ("--prefill-chunk", self.prefill_chunk, 2),
            ("--static-seq", self.static_seq, 1),
        ):
            if value is None:
                continue
            if not self.static:
                raise ExportError(f"{flag} sizes the --static graphs, and --static was not given")
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ExportError(f"{flag} must be an integer >= {least}, got {value!r}")
        if self.static and self.dtype != "float32":
            raise ExportError(f"--static writes float32 graphs, got --dtype {self.dtype}")
        if self.static and self.quantize:
            raise ExportError("--static writes float graphs; --quantize int8 cannot apply to them")

    def _check_import_options(self) -> None:
        if not self.import_foreign and (self.import_as or self.calibration_data):
            given = "--import-as" if self.import_as else "--calibration-data"
            raise ExportError(f"{given} needs importing, and --no-import was given")
        if not (isinstance(self.heal_steps, int) and self.heal_steps >= 0):
            raise ExportError(f"heal steps must be an integer >= 0, got {self.heal_steps!r}")
        if self.heal_steps and self.calibration_data is None:
            raise ExportError("--heal-steps distills on --calibration-data, which was not given")
        if self.import_kwargs is not None and self.import_as is None:
            raise ExportError(
                "--import-kwargs describes the class named by --import-as, which was not given"
            )
        if self.import_as is not None:
            importer_for_class(self.import_as)  # raises for a class no importer converts
            if self.import_kwargs is not None and not isinstance(self.import_kwargs, Mapping):
                raise ExportError(
                    f"--import-kwargs must be a JSON object of {self.import_as}'s constructor "
                    f"arguments, got {type(self.import_kwargs).__name__}"
                )

    def _check_onnx_options(self) -> None:
        if "onnx" in self.formats:
            # The exporter may still change once the model is loaded (TorchScript input needs
            # the torchscript exporter); the bounds of either are checked again then.
            check_opset(self.opset, self.exporter or _LOOSEST_EXPORTER)
        elif self.fused_attention:
            raise ExportError("--fused-attention changes the ONNX graph, and --format has no onnx")
        elif self.quantize:
            raise ExportError("--quantize int8 quantizes the ONNX graph, and --format has no onnx")
        if self.fused_attention and self.exporter == "torchscript":
            raise ExportError(
                "--fused-attention needs the dynamo exporter; the torchscript exporter cannot "
                "translate the fused op"
            )
        if self.quantize and self.dtype != "float32":
            raise ExportError(f"--quantize int8 needs float32 weights, got --dtype {self.dtype}")
        if self.int8_scheme is not None and not self.quantize:
            raise ExportError("--int8-scheme applies to --quantize int8, which was not given")
        int8_settings(self.int8_scheme)  # raises on an unknown scheme

    @property
    def int8_settings(self) -> QuantizationSettings | None:
        """The int8 scheme's settings with ``quantize="int8"``; None for a float graph."""
        return int8_settings(self.int8_scheme) if self.quantize else None

    def exporter_for(self, source: str) -> str:
        """The ONNX exporter for a model loaded from ``source`` (a ``LoadedModel.source``)."""
        if source != "torchscript":
            return self.exporter or DEFAULT_EXPORTER
        if "pt2" in self.formats:
            raise ExportError(
                "--format pt2 needs a PyTorch module: torch.export cannot read a TorchScript "
                "archive; export the model's checkpoint instead"
            )
        if self.exporter == "dynamo":
            raise ExportError(
                "a TorchScript archive can only be exported with --exporter torchscript "
                "(torch.export cannot read TorchScript)"
            )
        return "torchscript"


# The exporter with the widest opset range: the up-front check of an opset that the model's
# exporter checks exactly once it is known.
_LOOSEST_EXPORTER = min(EXPORTERS, key=MIN_OPSET_BY_EXPORTER.__getitem__)


def _parse_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    unknown = [f for f in items if f not in FORMAT_REGISTRY]
    if unknown or not items:
        raise ExportError(
            f"format must be a comma-separated subset of {', '.join(FORMAT_REGISTRY)}, "
            f"got {','.join(items)!r}"
        )
    return tuple(f for f in FORMAT_REGISTRY if f in items)  # in the registry's (build) order


def check_tolerance(what: str, value: float | None) -> None:
    """ExportError unless ``value`` is None (the default) or a finite number >= 0."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ExportError(f"{what} must be a finite number >= 0, got {value!r}")
