"""Finding and reading an export's manifest, and the files it lists.

Pure Python and numpy: apps load it without torch. What a manifest holds, typed, is
:mod:`.contract`; the exporter writes manifests with ``favor.exporter.manifest`` and reads them
back through this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from .contract import FORMAT, FORMAT_VERSION, FileEntry, Manifest, ManifestError, check_structure

# Re-exported: the exporter imports the format it writes (FORMAT, FORMAT_VERSION) from here.
__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_SUFFIX",
    "ManifestError",
    "export_files",
    "find_manifest",
    "load_manifest",
    "read_manifest",
    "sha256_file",
]

MANIFEST_SUFFIX = ".manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_manifest(path: str | Path, name: str | None = None) -> Path:
    """The manifest for ``path``: an export directory, a ``.onnx`` or ``.ort`` file, or the
    manifest itself.

    ``name`` picks one export when a directory holds several.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(MANIFEST_SUFFIX):
        return path
    if path.suffix in (".onnx", ".ort"):
        if not path.is_file():
            raise ManifestError(f"model not found: {path}")
        beside = path.with_name(path.name.removesuffix(path.suffix) + MANIFEST_SUFFIX)
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


def load_manifest(path: str | Path, *, verify: bool = True) -> Manifest:
    """The typed manifest at ``path``; with ``verify``, the sha256 of every file checked.

    Whatever the manifest holds, problems are :class:`ManifestError`: a manifest comes with the
    files it describes, and is no more trusted than they are. Every file path must lie inside
    the manifest's directory (:func:`export_files`), checked before any file is looked at.
    """
    path = Path(path)
    manifest = Manifest.from_json(_parse(path), path.name)
    _check_files(path, manifest.files, verify)
    return manifest


def read_manifest(path: str | Path, *, verify: bool = True) -> dict:
    """The manifest at ``path`` as parsed JSON, for readers of the dict: :func:`load_manifest`'s
    checks of structure, paths and sha256, without typing the entries it leaves as they are."""
    path = Path(path)
    manifest = _parse(path)
    check_structure(manifest, path.name)
    _check_files(path, _file_entries(manifest), verify)
    return manifest


def export_files(manifest_path: Path, manifest: Manifest | dict) -> dict[str, Path]:
    """``{role: path}`` of every file a checked manifest lists, each inside its directory.

    ``manifest`` is a :class:`Manifest` or :func:`read_manifest`'s dict. A path that leads out
    of the directory (``..``, an absolute path, or a symlink pointing out) is a ManifestError,
    worded the same whether or not its target exists.
    """
    files = manifest.files if isinstance(manifest, Manifest) else _file_entries(manifest)
    return _located(Path(manifest_path), files)


def _file_entries(manifest: dict) -> dict[str, FileEntry]:
    return {role: FileEntry.from_json(entry) for role, entry in manifest["files"].items()}


def _located(manifest_path: Path, files: Mapping[str, FileEntry]) -> dict[str, Path]:
    directory = manifest_path.parent
    root = directory.resolve()
    paths = {}
    for role, entry in files.items():
        try:
            target = (directory / entry.path).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            target = None
        if target is None or target == root or not target.is_relative_to(root):
            raise ManifestError(
                f"{manifest_path.name} lists {role} file {entry.path!r}, which lies "
                f"outside the export directory {directory}: refusing to read it"
            )
        paths[role] = directory / entry.path
    return paths


def _check_files(manifest_path: Path, files: Mapping[str, FileEntry], verify: bool) -> None:
    """Every file inside the manifest's directory; with ``verify``, there with its sha256."""
    located = _located(manifest_path, files)
    if not verify:
        return
    for role, file in located.items():
        if not file.is_file():
            raise ManifestError(
                f"the manifest's {role} file {file.name} is missing from {file.parent}"
            )
        if sha256_file(file) != files[role].sha256:
            raise ManifestError(
                f"{file.name} does not match the sha256 in {manifest_path.name}: "
                "the file changed after export"
            )


def _parse(path: Path) -> object:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: bad JSON, bad UTF-8, huge integers
        raise ManifestError(f"cannot read manifest {path}: {error}") from None
    except RecursionError:
        raise ManifestError(f"cannot read manifest {path}: nested too deeply") from None
