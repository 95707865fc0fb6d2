"""Importers: models trained with other implementations, rebuilt from favor.ops.

An importer (:class:`Importer`, in :data:`IMPORTER_REGISTRY`) recognizes foreign modules and
returns the equivalent favor model with every weight carried over; :mod:`.fidelity` measures how
close it is. ``favor-export`` converts recognized models automatically (``--no-import`` keeps
them as they are); :func:`import_module` does it in Python, for fine-tuning or inspection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..errors import ExportError
from . import performer_pytorch  # noqa: F401  registers the importer
from .base import (
    IMPORTER_REGISTRY,
    Importer,
    ImportRefusedError,
    find_importer,
    importer_for_class,
    register_importer,
)
from .fidelity import FidelityReport


def import_module(module: nn.Module) -> nn.Module:
    """The favor.ops equivalent of a foreign ``module``, in eval mode; ``module`` is unchanged.

    Raises :class:`ImportRefusedError` naming an option that cannot be reproduced, and ExportError
    when no importer recognizes the module.
    """
    importer = find_importer(module)
    if importer is None:
        known = ", ".join(c for i in IMPORTER_REGISTRY.values() for c in i.classes)
        raise ExportError(
            f"no importer recognizes {type(module).__module__}.{type(module).__qualname__}; "
            f"they convert {known} and modules containing them"
        )
    return importer.convert(module).eval()


def read_calibration(path: Path, model: nn.Module) -> np.ndarray:
    """Token ids to measure an imported LM on: a ``.npy`` of integer ids, or a text file read as
    UTF-8 bytes for a model whose vocabulary covers all 256 byte values."""
    path = Path(path)
    vocab = getattr(model, "vocab_size", None)
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
            if ids.dtype.kind not in "iu":
                raise ExportError(
                    f"--calibration-data {path} holds {ids.dtype} values, not token ids"
                )
        else:
            if vocab is None or vocab < 256:
                raise ExportError(
                    f"--calibration-data {path} is text, which is read as bytes, but the model's "
                    f"vocabulary has {vocab} tokens: give token ids as a .npy file"
                )
            ids = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64)
    except OSError as error:
        raise ExportError(f"cannot read --calibration-data {path}: {error.strerror}") from None
    except ValueError as error:  # np.load: not an .npy file, or pickled objects
        raise ExportError(f"cannot read --calibration-data {path}: {error}") from None
    if ids.size < 2:
        raise ExportError(f"--calibration-data {path} holds fewer than 2 tokens")
    if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise ExportError(
            f"--calibration-data {path} holds token id {int(ids.max() if ids.max() >= vocab else ids.min())}, "
            f"outside the model's vocabulary [0, {vocab})"
        )
    return ids


__all__ = [
    "IMPORTER_REGISTRY",
    "FidelityReport",
    "ImportRefusedError",
    "Importer",
    "find_importer",
    "import_module",
    "importer_for_class",
    "read_calibration",
    "register_importer",
]
