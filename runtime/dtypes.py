"""The manifest's dtype names, each with its numpy dtype and ONNX Runtime's type string.

The one table of them: the runtime checks feeds and graphs with it, and the exporter builds its
torch table from :data:`DTYPE_NAMES` (``{name: getattr(torch, name) for name in DTYPE_NAMES}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """What a manifest dtype name means to numpy and to ONNX Runtime."""

    numpy: np.dtype | None  # None where numpy has no such type (bfloat16)
    ort: str

    @property
    def integer(self) -> bool:
        return self.numpy is not None and self.numpy.kind in "iu"


DTYPES: dict[str, DType] = {
    "float32": DType(np.dtype(np.float32), "tensor(float)"),
    "float16": DType(np.dtype(np.float16), "tensor(float16)"),
    "bfloat16": DType(None, "tensor(bfloat16)"),
    "float64": DType(np.dtype(np.float64), "tensor(double)"),
    "int64": DType(np.dtype(np.int64), "tensor(int64)"),
    "int32": DType(np.dtype(np.int32), "tensor(int32)"),
    "bool": DType(np.dtype(np.bool_), "tensor(bool)"),
}
DTYPE_NAMES = tuple(DTYPES)


def numpy_dtype(name: str) -> np.dtype:
    """numpy's dtype for manifest dtype ``name``; ValueError for one numpy lacks (bfloat16)."""
    found = DTYPES[name].numpy
    if found is None:
        raise ValueError(f"numpy has no {name} type: arrays of it cannot be made here")
    return found
