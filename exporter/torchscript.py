"""torch -> TorchScript by tracing the same module the ONNX export uses."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError
from .specs import ModelSpec


def build_torchscript(module: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Trace ``module`` at the spec's example inputs and save the archive to ``path``.

    The archive holds only TorchScript code and tensors, so ``torch.jit.load`` reads it in a
    process where ``favor`` is not installed.
    """
    example = spec.example()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as error:  # tracing raises many types; all mean "cannot trace"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(f"the model cannot be traced to TorchScript: {first}") from error
