"""Writing output files so that a failure leaves the output directory as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ExportError


def prepare_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and make sure files can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create output directory {path}: {error.strerror}") from None
    if not path.is_dir():
        raise ExportError(f"output path {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ExportError(f"output directory {path} is not writable")
    return path


@contextlib.contextmanager
def staging_dir(output_dir: Path) -> Iterator[Path]:
    """A hidden scratch directory inside ``output_dir``, removed whatever happens.

    It sits on the same filesystem as the destination, so :func:`publish` can rename files into
    place atomically.
    """
    try:
        staging = Path(tempfile.mkdtemp(prefix=".favor-export-", dir=output_dir))
    except OSError as error:
        raise ExportError(
            f"cannot write to output directory {output_dir}: {error.strerror}"
        ) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, output_dir: Path, names: list[str]) -> list[Path]:
    """Move ``names`` from ``staging`` into ``output_dir`` in order; put the manifest last.

    Each rename is atomic, so every published file is complete; the manifest, which names and
    hashes the others, appears only after all of them.
    """
    published = []
    for name in names:
        target = output_dir / name
        os.replace(staging / name, target)
        published.append(target)
    return published


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
