"""Outputs holding a NaN or inf, on either side: each must fail, naming where it is."""

import math

import numpy as np

WANT = np.arange(12, dtype=np.float32).reshape(3, 4) + 1


def _with(array: np.ndarray, index: tuple[int, int], value: float) -> np.ndarray:
    changed = array.copy()
    changed[index] = value
    return changed


# id -> (got, want, what the note must say)
NONFINITE = {
    "nan-in-export": (_with(WANT, (1, 2), math.nan), WANT, "in the exported output at index (1, 2)"),
    "inf-in-export": (_with(WANT, (2, 0), math.inf), WANT, "inf in the exported output at index (2, 0)"),
    "nan-in-pytorch": (WANT, _with(WANT, (2, 3), math.nan), "nan in PyTorch's output at index (2, 3)"),
    "same-nan-both": (_with(WANT, (0, 3), math.nan), _with(WANT, (0, 3), math.nan), "nan in PyTorch's output at index (0, 3)"),
    "same-inf-both": (_with(WANT, (0, 1), -math.inf), _with(WANT, (0, 1), -math.inf), "-inf in PyTorch's output at index (0, 1)"),
}  # fmt: skip
