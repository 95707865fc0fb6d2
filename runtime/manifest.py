"""Reading an export's manifest: the contract between the exporter and the runtime.

Pure Python (json, hashlib): apps load it without torch. The exporter writes manifests with
``favor.exporter.manifest`` and reads them back through this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "favor-export-manifest"
FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


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
    """Parse a manifest; with ``verify``, check the sha256 of every file it lists."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"cannot read manifest {path}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a favor-export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has manifest format version {manifest.get('format_version')}; "
            f"this version reads {FORMAT_VERSION}"
        )
    for key in ("inputs", "outputs", "state", "files"):
        if key not in manifest:
            raise ManifestError(f"{path} lacks the {key!r} entry")
    if verify:
        for role, entry in manifest["files"].items():
            file = Path(path).parent / entry["path"]
            if not file.is_file():
                raise ManifestError(
                    f"the manifest's {role} file {file.name} is missing from {file.parent}"
                )
            if sha256_file(file) != entry["sha256"]:
                raise ManifestError(
                    f"{file.name} does not match the sha256 in {Path(path).name}: "
                    "the file changed after export"
                )
    return manifest
