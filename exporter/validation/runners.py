"""What validation runs: a :class:`Runner` per way of executing an exported file.

Formats (:mod:`favor.exporter.formats`) make the runners of the files they write; validation
knows nothing of file types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MissingKernelError
from ..quant_budget import ParityBudget

Run = Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]
# PyTorch's outputs for inputs in the spec's order: what every runner is compared with.
Expected = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Runner:
    """One backend: ``run(inputs)`` takes tensors in the spec's input order and returns numpy
    arrays in its output order.

    ``budget``: the outputs are held to this parity budget (:mod:`.quant_budget`, int8 graphs)
    instead of elementwise tolerances. ``max_tokens``: the backend is too slow for more than
    this many ``batch x seq`` tokens per case and skips larger cases. ``max_sizes``: the most
    each named dim may be (a fixed-shape graph's length), larger cases skipped. ``decode``: for causal
    LMs, the backend also decodes token by token, carrying the state through its inputs and
    outputs (:mod:`.decode`).
    """

    label: str
    run: Run
    budget: ParityBudget | None = None
    max_tokens: int | None = None
    max_sizes: Mapping[str, int] | None = None
    decode: bool = False

    def takes(self, sizes: Mapping[str, int]) -> bool:
        """Whether a case of ``sizes`` (symbol -> size) is within this backend's limits."""
        if self.max_tokens is not None and math.prod(sizes.values()) > self.max_tokens:
            return False
        limits = self.max_sizes or {}
        return all(sizes.get(name, 0) <= most for name, most in limits.items())


def loaded_or_raising(load: Callable[[], Run]) -> Run:
    """``load()``; if loading the exported file raises, a run that raises the same error.

    A file that does not load then fails every case, as one that does not run does. A missing
    kernel stays an error of the environment (:class:`MissingKernelError`).
    """
    try:
        return load()
    except MissingKernelError:
        raise
    except Exception as error:
        return _raising(error)


def _raising(error: Exception) -> Run:
    def raise_it(_inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        raise error

    return raise_it


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array; bfloat16, which numpy lacks, as float32 (exactly)."""
    return t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()


# Where in its C++ sources onnxruntime raised, e.g. "/onnxruntime_src/.../reshape_helper.h:91
# onnxruntime::ReshapeHelper::ReshapeHelper(const TensorShape&, ...) ": no help to the user.
_SOURCE_LOCATION = re.compile(r"\S+\.(?:h|cc|cpp):\d+ [\w:~<>]+\([^)]*\)\s*")


def raised(error: Exception) -> str:
    """``raised Type: cause``: one line for a report row whose backend raised ``error``."""
    # The last line carries the cause: TorchScript puts its interpreter traceback first.
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    cause = _SOURCE_LOCATION.sub("", lines[-1].strip()).removeprefix(f"{type(error).__name__}: ")
    return f"raised {type(error).__name__}: {cause[:300]}"
