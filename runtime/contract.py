"""The manifest as typed values: the contract between the exporter, which writes it, and the
runtime, which reads it.

Stdlib and numpy only: apps read it without torch. :meth:`Manifest.from_json` checks a parsed
manifest and types it, once; :meth:`Manifest.to_json` gives back the dict the exporter writes,
key for key and in its order. Roles (:attr:`Manifest.tokens`, :attr:`Manifest.logits`) follow
from the state wiring and the dtypes, never from where an entry sits in its list.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from .checks import is_int
from .dtypes import DTYPE_NAMES, DTYPES

FORMAT = "favor-export-manifest"
FORMAT_VERSION = 1
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()  # an absent entry; as a default, one that is required


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent export: the message names the file and the problem."""


class _Name(str, Enum):
    # Members are the manifest's own strings: they compare equal to them and print as them.
    __str__ = str.__str__
    __format__ = str.__format__


class ModelKind(_Name):
    """What was exported, which decides the roles of its inputs and outputs."""

    CAUSAL_LM = "causal-lm"
    ENCODER = "encoder"
    MODULE = "module"


class Sampler(_Name):
    """How validation fills an input: random ``data`` (integers from its range), ``zeros`` (an
    empty recurrent state), a ``padding-mask`` (True at trailing positions), or a ``keep-mask``
    (its negation: True at real tokens, a prefix of at least one)."""

    DATA = "data"
    ZEROS = "zeros"
    PADDING_MASK = "padding-mask"
    KEEP_MASK = "keep-mask"


# Kinds whose integer inputs with a manifest range are token ids, the range their vocabulary.
# (A "module" export's range is only what validation drew values from.)
VOCABULARY_KINDS = (ModelKind.CAUSAL_LM, ModelKind.ENCODER)


@dataclass(frozen=True)
class TensorEntry:
    """A graph input or output: str dims are symbolic, as in ``("batch", "seq", 30)``.

    ``range`` is ``(low, high)``, the half-open range of an integer input's values (a token
    input's vocabulary). Inputs have a ``sampler``; outputs have none.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    range: tuple[int, int] | None = None
    sampler: Sampler | None = None

    def to_json(self) -> dict:
        entry: dict = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.range is not None:
            entry["range"] = list(self.range)
        if self.sampler is not None:
            entry["sampler"] = self.sampler.value
        return entry


@dataclass(frozen=True)
class StateEntry:
    """A carried tensor: output ``output`` of one call is input ``input`` of the next, starting
    from ``initial`` (zeros) of ``dtype`` and ``shape``, the input's."""

    input: str
    output: str
    dtype: str
    shape: tuple[int | str, ...]
    initial: str = "zeros"

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    """A file of the export: ``path`` relative to the manifest's directory."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def from_json(cls, entry: dict) -> FileEntry:
        """An entry :func:`check_structure` has checked."""
        return cls(entry["path"], entry["sha256"], entry["bytes"])

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Manifest:
    """Every entry the exporter writes, in its order; free-form objects stay dicts.

    ``fused_attention``: causal attention is ONNX Runtime's fused LinearAttention op. ``dtype``:
    the precision of the weights. ``quantization``, ``torchscript`` and ``validation`` are None
    when the export has none.
    """

    format: str
    format_version: int
    name: str
    kind: ModelKind
    versions: dict
    opset: int | None
    exporter: str | None
    fused_attention: bool
    dtype: str
    quantization: dict | None
    source: dict
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    state: tuple[StateEntry, ...]
    torchscript: dict | None
    # The fixed-shape graphs of a --static export: {"batch", "prefill_chunk" (causal LMs) or
    # "seq" (encoders), "graphs": {role: {provider: usability summary}}}; None without them.
    static: dict | None
    sequence_dim: str | None
    chunk_size: int | None
    # The longest sequence the model takes (its largest position + 1); None where unbounded.
    max_sequence_length: int | None
    # How to turn text into token ids and back: {"kind": ...} with the file as files["text"]
    # (favor.runtime.text); None where the export carries no vocabulary.
    text: dict | None
    attention: tuple[dict, ...]
    example_sizes: dict[str, int]
    sweep: tuple[dict[str, int], ...]
    validation: dict | None
    files: dict[str, FileEntry]

    @classmethod
    def from_json(cls, obj: object, source: str) -> Manifest:
        """Check parsed JSON and type it; ManifestError naming ``source`` and the first bad entry.

        Entries older manifests lack take the values those manifests meant: ``fused_attention``
        false, ``dtype`` float32, no ``quantization``, ``torchscript`` or ``static``, inputs sampled from
        ``data``, state of its input's dtype and shape starting from zeros.
        """
        check_structure(obj, source)
        check = _Checker(source)
        inputs = tuple(
            _input(check, entry, f"inputs[{index}]") for index, entry in enumerate(obj["inputs"])
        )
        by_name = {entry.name: entry for entry in inputs}
        state = tuple(
            _state(check, entry, f"state[{index}]", by_name[entry["input"]])
            for index, entry in enumerate(obj["state"])
        )
        entries = {
            key: copy.deepcopy(check.require(obj, key, valid, want, default=default))
            for key, (valid, want, default) in _ENTRIES.items()
        }
        for key in ("attention", "sweep"):
            entries[key] = tuple(entries[key])
        manifest = cls(
            format=obj["format"],
            format_version=obj["format_version"],
            kind=ModelKind(obj["kind"]),
            inputs=inputs,
            outputs=tuple(_tensor(entry, None) for entry in obj["outputs"]),
            state=state,
            sequence_dim=obj.get("sequence_dim"),
            files={role: FileEntry.from_json(entry) for role, entry in obj["files"].items()},
            **entries,
        )
        try:
            _ = manifest.tokens, manifest.logits  # each raises if its role is ambiguous
        except ManifestError as error:
            raise ManifestError(f"invalid manifest {source}: {error}") from None
        if manifest.text is not None and "text" not in manifest.files:
            raise ManifestError(f"invalid manifest {source}: it has text but no files.text")
        return manifest

    def to_json(self) -> dict:
        """The dict the exporter writes, every key in its order: ``json.dumps(m.to_json(),
        indent=2)`` is the manifest file's text. An older manifest's missing entries come back
        at their defaults."""
        return {
            field.name: _to_json(getattr(self, field.name)) for field in dataclasses.fields(self)
        }

    def input(self, name: str) -> TensorEntry:
        """The input called ``name``; KeyError if there is none."""
        return {entry.name: entry for entry in self.inputs}[name]

    def output(self, name: str) -> TensorEntry:
        """The output called ``name``; KeyError if there is none."""
        return {entry.name: entry for entry in self.outputs}[name]

    @property
    def state_inputs(self) -> tuple[TensorEntry, ...]:
        """The inputs that carry state, in the order of :attr:`state`."""
        return tuple(self.input(entry.input) for entry in self.state)

    @property
    def tokens(self) -> TensorEntry | None:
        """A causal LM's or encoder's token ids: its one integer input that is not state.

        None for a module, whose inputs have no roles.
        """
        if self.kind is ModelKind.MODULE:
            return None
        carried = {entry.input for entry in self.state}
        found = [t for t in self.inputs if t.name not in carried and DTYPES[t.dtype].integer]
        return self._only(found, "integer input that is not state (its token ids)")

    @property
    def logits(self) -> TensorEntry | None:
        """A causal LM's logits ``(batch, seq, vocabulary)``: its one output that is not state.

        None for other kinds, whose outputs have no roles.
        """
        if self.kind is not ModelKind.CAUSAL_LM:
            return None
        carried = {entry.output for entry in self.state}
        found = [t for t in self.outputs if t.name not in carried]
        return self._only(found, "output that is not state (its logits)")

    def _only(self, found: list[TensorEntry], role: str) -> TensorEntry:
        if len(found) != 1:
            names = ", ".join(repr(entry.name) for entry in found) or "none"
            raise ManifestError(f"kind {self.kind} needs exactly one {role}, got {names}")
        return found[0]


def _input(check: _Checker, entry: dict, where: str) -> TensorEntry:
    samplers = _values(Sampler)
    sampler = check.require(
        entry, "sampler", lambda v: v in samplers, _one_of(samplers), where,
        default=Sampler.DATA.value,
    )  # fmt: skip
    return _tensor(entry, Sampler(sampler))


def _tensor(entry: dict, sampler: Sampler | None) -> TensorEntry:
    """A tensor entry :func:`check_structure` has checked."""
    low_high = entry.get("range")
    return TensorEntry(
        entry["name"],
        entry["dtype"],
        tuple(entry["shape"]),
        None if low_high is None else tuple(low_high),
        sampler,
    )


def _state(check: _Checker, entry: dict, where: str, carried: TensorEntry) -> StateEntry:
    """A checked state entry; what it lacks is its input's (what the exporter writes)."""
    return StateEntry(
        entry["input"],
        entry["output"],
        check.dtype(entry, where, default=carried.dtype),
        tuple(check.shape(entry, where, default=list(carried.shape))),
        check.require(entry, "initial", lambda v: v == "zeros", "'zeros'", where, default="zeros"),
    )


def _to_json(value: object) -> object:
    """``value`` as JSON-ready data: entries and enums written out, tuples as lists, copied."""
    if isinstance(value, (TensorEntry, StateEntry, FileEntry)):
        return value.to_json()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    return value


def check_structure(manifest: object, source: str) -> None:
    """ManifestError naming the first entry the runtime relies on that is missing or malformed.

    ``source`` names the manifest in messages. Checked: format and version, ``kind``, the
    tensors in ``inputs`` and ``outputs``, the ``state`` wiring between them, ``files``, and
    ``sequence_dim``.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{source} is not a favor-export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{source} has manifest format version {_describe(manifest.get('format_version'))}; "
            f"this version reads {FORMAT_VERSION}"
        )
    check = _Checker(source)
    kinds = _values(ModelKind)
    check.require(manifest, "kind", lambda v: v in kinds, _one_of(kinds))
    inputs = check.tensors(manifest, "inputs")
    outputs = check.tensors(manifest, "outputs")
    for index, entry in enumerate(check.items(manifest, "state", non_empty=False)):
        where = f"state[{index}]"
        check.require(entry, "input", lambda v: v in inputs, "the name of one of the inputs", where)
        check.require(
            entry, "output", lambda v: v in outputs, "the name of one of the outputs", where
        )
    files = check.require(manifest, "files", _is_object, "an object")
    for role, entry in files.items():
        where = f"files.{role}"
        check.require(files, role, _is_object, "an object", "files")
        check.require(entry, "path", _is_name, "a non-empty string", where)
        check.require(
            entry, "sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
            "a sha256 hex digest", where,
        )  # fmt: skip
        check.require(entry, "bytes", lambda v: is_int(v, at_least=0), "an integer >= 0", where)
    if manifest.get("sequence_dim") is not None:
        check.require(manifest, "sequence_dim", _is_symbol, "a symbol name or null")


class _Checker:
    """Checks of one manifest's entries, each raising a ManifestError that names the entry."""

    def __init__(self, source: str) -> None:
        self.source = source

    def require(
        self,
        parent: dict,
        key: str,
        valid: Callable[[object], bool],
        want: str,
        where: str = "",
        *,
        default: object = _MISSING,
    ) -> object:
        """``parent[key]``, or a ManifestError saying it must be ``want``.

        ``default`` stands in for a missing key; without one the key is required.
        """
        value = parent.get(key, default)
        if value is _MISSING or not valid(value):
            self.fail(f"{where}.{key}" if where else key, want, value)
        return value

    def fail(self, where: str, want: str, value: object) -> NoReturn:
        raise ManifestError(
            f"invalid manifest {self.source}: {where} must be {want}, got {_describe(value)}"
        )

    def items(self, manifest: dict, key: str, *, non_empty: bool = True) -> list[dict]:
        """The list ``manifest[key]``, every item an object."""
        want = "a non-empty list" if non_empty else "a list"
        items = self.require(
            manifest, key, lambda v: isinstance(v, list) and (v or not non_empty), want
        )
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                self.fail(f"{key}[{index}]", "an object", item)
        return items

    def dtype(self, entry: dict, where: str, *, default: object = _MISSING) -> str:
        return self.require(entry, "dtype", _is_dtype, _one_of(DTYPE_NAMES), where, default=default)

    def shape(self, entry: dict, where: str, *, default: object = _MISSING) -> list:
        shape = self.require(entry, "shape", lambda v: isinstance(v, list), "a list", where,
                             default=default)  # fmt: skip
        for axis, dim in enumerate(shape):
            if not (_is_symbol(dim) or is_int(dim, at_least=1)):
                self.fail(f"{where}.shape[{axis}]", "a positive integer or a symbol name", dim)
        return shape

    def tensors(self, manifest: dict, key: str) -> set[str]:
        """Check the tensor list ``manifest[key]``; return its names."""
        names: set[str] = set()
        for index, entry in enumerate(self.items(manifest, key)):
            where = f"{key}[{index}]"
            name = self.require(entry, "name", _is_name, "a non-empty string", where)
            if name in names:
                raise ManifestError(
                    f"invalid manifest {self.source}: {where}.name {name!r} is listed twice"
                )
            names.add(name)
            self.dtype(entry, where)
            self.shape(entry, where)
            if "range" in entry:
                self.require(
                    entry, "range", _is_range, "[low, high] integers with low < high", where
                )
        return names


def _values(names: type[_Name]) -> tuple[str, ...]:
    return tuple(member.value for member in names)


def _one_of(values: tuple[str, ...]) -> str:
    return f"one of {', '.join(values)}"


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_symbol(value: object) -> bool:
    return isinstance(value, str) and _SYMBOL.fullmatch(value) is not None


def _is_dtype(value: object) -> bool:
    return value in DTYPE_NAMES


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_positive(value: object) -> bool:
    return is_int(value, at_least=1)


def _is_sizes(value: object) -> bool:
    """``{"batch": 2, "seq": 21}``: sizes of symbolic dims."""
    return _is_object(value) and all(_is_positive(size) for size in value.values())


def _or_null(valid: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or valid(value)


def _list_of(valid: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and all(valid(item) for item in value)


def _is_text(value: object) -> bool:
    return _is_object(value) and set(value) == {"kind"} and _is_name(value["kind"])


def _is_range(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and value[0] < value[1]
    )


# The entries check_structure leaves alone: (valid, what it must be, default). The defaults are
# what manifests written before the entry existed meant; _MISSING: every manifest has it.
_ENTRIES: dict[str, tuple[Callable[[object], bool], str, object]] = {
    "name": (_is_name, "a non-empty string", _MISSING),
    "versions": (_is_object, "an object", _MISSING),
    "opset": (_or_null(_is_positive), "a positive integer or null", _MISSING),
    "exporter": (_or_null(lambda v: isinstance(v, str)), "a string or null", _MISSING),
    "fused_attention": (lambda v: isinstance(v, bool), "true or false", False),
    "dtype": (_is_dtype, _one_of(DTYPE_NAMES), "float32"),
    "quantization": (_or_null(_is_object), "an object or null", None),
    "source": (_is_object, "an object", _MISSING),
    "torchscript": (_or_null(_is_object), "an object or null", None),
    "static": (_or_null(_is_object), "an object or null", None),
    "chunk_size": (_or_null(_is_positive), "a positive integer or null", None),
    "max_sequence_length": (_or_null(_is_positive), "a positive integer or null", None),
    "text": (_or_null(_is_text), 'null or an object {"kind": a non-empty string}', None),
    "attention": (_list_of(_is_object), "a list of objects", _MISSING),
    "example_sizes": (_is_sizes, "an object of positive integers", {}),
    "sweep": (_list_of(_is_sizes), "a list of objects of positive integers", []),
    "validation": (_or_null(_is_object), "an object or null", _MISSING),
}


def _describe(value: object) -> str:
    """A short rendering of a manifest value for an error message."""
    if value is _MISSING:
        return "nothing"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        flat = all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
        text = json.dumps(value) if flat else ""
        return text if flat and len(text) <= 40 else f"a list of {len(value)} items"
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
