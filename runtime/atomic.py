"""Writing a file so that it is complete or absent: a temporary file beside it, then a rename.

Shared by the runtime's ``favor-run --output`` and the exporter's checkpoints and reports; pure
Python, so apps use it without torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def plain_mode() -> int:
    """The permissions a plain ``open()`` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` only when the body succeeds.

    The temporary file sits in ``path``'s directory, so the final ``os.replace`` is atomic; a
    symlink at ``path`` is replaced, never written through. On any failure (an OSError, an
    interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        tmp.chmod(plain_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
