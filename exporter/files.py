"""Writing output files so that a failure leaves the output directory as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from favor.runtime.atomic import atomic_file, plain_mode

from .errors import ExportError


def _prepare(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create output directory {path}: {error.strerror}") from None
    if not path.is_dir():
        raise ExportError(f"output path {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ExportError(f"output directory {path} is not writable")


@contextlib.contextmanager
def output_directory(path: Path) -> Iterator[Path]:
    """``path``, created if needed and checked writable.

    If the body fails, the directories this created are removed again (only while empty, so a
    directory that existed before, or that someone else filled meanwhile, is never removed).
    """
    created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # innermost first
    try:
        _prepare(path)
        yield path
    except BaseException:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


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


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report an OSError in the body (disk full, file too large, ...) as a failure to write
    ``path``: bad environment, not a bug."""
    try:
        yield
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from error


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_targets(targets: Iterable[Path], source: Path | None = None) -> None:
    """Refuse output paths where a directory is in the way, or that are ``source``, the model
    file being exported (publishing would replace it)."""
    for target in targets:
        if source is not None and _same_file(target, source):
            raise ExportError(
                f"the output file {target} is the model being exported; "
                "choose another name (--name) or output directory (--output)"
            )
        if target.is_dir() and not target.is_symlink():
            raise ExportError(f"cannot write {target}: a directory is in the way")


def publish(staging: Path, output_dir: Path, names: list[str]) -> list[Path]:
    """Move ``names`` (the manifest last) from ``staging`` into ``output_dir``: all or none.

    Files already at the targets, a previous export, are first moved aside into ``staging``,
    its manifest first; the new manifest, which names and hashes the others, comes last. If a
    rename fails or the process is interrupted, every rename is undone in reverse, so the
    previous export is left exactly as it was. Each published file gets the permissions a plain
    ``open()`` gives (writers such as onnx's external data create theirs 0600).
    """
    targets = [output_dir / name for name in names]
    check_targets(targets)
    mode = plain_mode()
    aside = Path(tempfile.mkdtemp(prefix="previous-", dir=staging))
    done: list[tuple[Path, Path]] = []
    try:
        for target in reversed(targets):
            if os.path.lexists(target):
                _rename(target, aside / target.name, done)
        for name, target in zip(names, targets, strict=True):
            os.chmod(staging / name, mode)
            _rename(staging / name, target, done)
    except BaseException as error:
        for source, destination in reversed(done):
            with contextlib.suppress(OSError):  # best effort: undo all that can be undone
                os.replace(destination, source)
        if isinstance(error, OSError):
            raise ExportError(
                f"cannot publish {Path(error.filename).name} into {output_dir}: "
                f"{error.strerror}; the directory is as it was"
            ) from error
        raise
    return targets


def _rename(source: Path, destination: Path, done: list[tuple[Path, Path]]) -> None:
    os.replace(source, destination)
    done.append((source, destination))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_file(path) as out:
        out.write(data)
