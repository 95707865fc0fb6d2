"""Exceptions the exporter raises, each carrying the CLI exit code it maps to."""

from __future__ import annotations


class ExportError(Exception):
    """Bad input or an impossible request: the message names what is wrong. CLI exit code 2."""

    exit_code = 2


class ValidationError(ExportError):
    """The exported files do not match PyTorch within tolerance. CLI exit code 1."""

    exit_code = 1

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class MissingKernelError(ExportError):
    """ONNX Runtime has no kernel for one of the graph's ops on a provider: it cannot run it."""
