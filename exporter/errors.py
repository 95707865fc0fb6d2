"""Exceptions the exporter raises, each carrying the CLI exit code it maps to."""

from __future__ import annotations

import re


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


class Terminated(BaseException):
    """SIGTERM arrived: raised by the CLIs' handler so that cleanup runs. CLI exit code 143.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` does not swallow it.
    """


def exception_chain(error: BaseException, *, hidden: bool = False) -> list[BaseException]:
    """``error`` and the exceptions behind it, outermost first.

    Follows ``__cause__``, else ``__context__`` unless ``raise ... from None`` hid it;
    ``hidden=True`` follows hidden contexts too.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        context = current.__context__
        if current.__suppress_context__ and not hidden:
            context = None
        current = current.__cause__ or context
    return chain


def one_line(error: BaseException) -> str:
    """``Type: message``, the message's first paragraph on one line, without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    first = " ".join(text.split("\n\n", 1)[0].split())
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
