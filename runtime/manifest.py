"""Reading an export's manifest: the contract between the exporter and the runtime.

Pure Python (json, hashlib): apps load it without torch. The exporter writes manifests with
``favor.exporter.manifest`` and reads them back through this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .checks import is_int

FORMAT = "favor-export-manifest"
FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
KINDS = ("causal-lm", "encoder", "module")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent export: the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_manifest(path: str | Path, name: str | None = None) -> Path:
    """The manifest for ``path``: an export directory, a ``.onnx`` file, or the manifest itself.

    ``name`` picks one export when a directory holds several.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(MANIFEST_SUFFIX):
        return path
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ManifestError(f"model not found: {path}")
        beside = path.with_name(path.name.removesuffix(".onnx") + MANIFEST_SUFFIX)
        if not beside.is_file():
            raise ManifestError(f"no manifest beside {path.name}: expected {beside.name}")
        return beside
    if not path.is_dir():
        raise ManifestError(
            f"export not found: {path} (give an export directory, .onnx or manifest)"
        )
    if name is not None:
        chosen = path / f"{name}{MANIFEST_SUFFIX}"
        if not chosen.is_file():
            raise ManifestError(f"no manifest {chosen.name} in {path}")
        return chosen
    found = sorted(path.glob(f"*{MANIFEST_SUFFIX}"))
    if not found:
        raise ManifestError(
            f"no *{MANIFEST_SUFFIX} in {path}: is it a favor-export output directory?"
        )
    if len(found) > 1:
        names = ", ".join(p.name.removesuffix(MANIFEST_SUFFIX) for p in found)
        raise ManifestError(f"{path} holds several exports ({names}); choose one by name")
    return found[0]


def read_manifest(path: Path, *, verify: bool = True) -> dict:
    """Parse a manifest and check its structure; with ``verify``, the sha256 of every file.

    Whatever the manifest holds, problems are :class:`ManifestError`: a manifest comes with the
    files it describes, and is no more trusted than they are. Every file path must lie inside
    the manifest's directory (:func:`export_files`), checked before any file is looked at.
    """
    path = Path(path)
    manifest = _parse(path)
    check_structure(manifest, path.name)
    files = export_files(path, manifest)
    if verify:
        for role, file in files.items():
            if not file.is_file():
                raise ManifestError(
                    f"the manifest's {role} file {file.name} is missing from {file.parent}"
                )
            if sha256_file(file) != manifest["files"][role]["sha256"]:
                raise ManifestError(
                    f"{file.name} does not match the sha256 in {path.name}: "
                    "the file changed after export"
                )
    return manifest


def export_files(manifest_path: Path, manifest: dict) -> dict[str, Path]:
    """``{role: path}`` of every file a checked manifest lists, each inside its directory.

    A path that leads out of the directory (``..``, an absolute path, or a symlink pointing out)
    is a ManifestError, worded the same whether or not its target exists.
    """
    directory = Path(manifest_path).parent
    root = directory.resolve()
    files = {}
    for role, entry in manifest["files"].items():
        try:
            target = (directory / entry["path"]).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            target = None
        if target is None or target == root or not target.is_relative_to(root):
            raise ManifestError(
                f"{Path(manifest_path).name} lists {role} file {entry['path']!r}, which lies "
                f"outside the export directory {directory}: refusing to read it"
            )
        files[role] = directory / entry["path"]
    return files


def _parse(path: Path) -> object:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: bad JSON, bad UTF-8, huge integers
        raise ManifestError(f"cannot read manifest {path}: {error}") from None
    except RecursionError:
        raise ManifestError(f"cannot read manifest {path}: nested too deeply") from None


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
    check.require(manifest, "kind", lambda v: v in KINDS, f"one of {', '.join(KINDS)}")
    inputs = check.tensors(manifest, "inputs")
    outputs = check.tensors(manifest, "outputs")
    for index, entry in enumerate(check.items(manifest, "state", non_empty=False)):
        where = f"state[{index}]"
        check.require(entry, "input", lambda v: v in inputs, "the name of one of the inputs", where)
        check.require(
            entry, "output", lambda v: v in outputs, "the name of one of the outputs", where
        )
    files = check.require(manifest, "files", lambda v: isinstance(v, dict), "an object")
    for role, entry in files.items():
        where = f"files.{role}"
        check.require(files, role, lambda v: isinstance(v, dict), "an object", "files")
        check.require(entry, "path", _is_name, "a non-empty string", where)
        check.require(
            entry, "sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
            "a sha256 hex digest", where,
        )  # fmt: skip
    if manifest.get("sequence_dim") is not None:
        check.require(manifest, "sequence_dim", _is_symbol, "a symbol name or null")


class _Checker:
    """Checks of one manifest's entries, each raising a ManifestError that names the entry."""

    def __init__(self, source: str) -> None:
        self.source = source

    def require(
        self, parent: dict, key: str, valid: Callable[[object], bool], want: str, where: str = ""
    ) -> object:
        """``parent[key]``, or a ManifestError saying it must be ``want``."""
        value = parent.get(key, _MISSING)
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
            self.require(
                entry, "dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}", where
            )
            shape = self.require(entry, "shape", lambda v: isinstance(v, list), "a list", where)
            for axis, dim in enumerate(shape):
                if not (_is_symbol(dim) or is_int(dim, at_least=1)):
                    self.fail(f"{where}.shape[{axis}]", "a positive integer or a symbol name", dim)
            if "range" in entry:
                self.require(
                    entry, "range", _is_range, "[low, high] integers with low < high", where
                )
        return names


_MISSING = object()


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_symbol(value: object) -> bool:
    return isinstance(value, str) and _SYMBOL.fullmatch(value) is not None


def _is_range(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and value[0] < value[1]
    )


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
