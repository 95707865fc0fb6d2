"""Why an export failed, in the user's terms: the submodule that called the offending aten op."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.utils._python_dispatch
from torch import nn

from ..errors import ExportError, exception_chain, one_line

# aten ops whose appearance in forward explains a forbidden graph op or a failed export.
SUSPECT_ATEN = re.compile(
    r"^aten::(rand|randn|randint|normal|bernoulli|multinomial|linalg_|_linalg_|geqrf|cholesky|qr|svd|eig)"
)


def _pop_into(stack: list[str]) -> Callable:
    # A forward hook that returns a value replaces the module's output: return None explicitly.
    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        stack.pop()

    return hook


def locate_ops(
    module: nn.Module, example: tuple[torch.Tensor, ...], pattern: re.Pattern
) -> list[str]:
    """``"submodule.path: aten::op"`` for each op matching ``pattern`` that forward calls."""
    stack = ["<root>"]
    found: list[str] = []
    handles = []
    if any(isinstance(sub, torch.jit.ScriptModule) for sub in module.modules()):
        return []  # TorchScript modules take no hooks
    for name, sub in module.named_modules():
        name = name.removeprefix("model.") if name != "model" else ""
        handles.append(
            sub.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n or "<root>"))
        )
        handles.append(sub.register_forward_hook(_pop_into(stack)))

    class Recorder(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func._schema.name
            if pattern.match(op):
                entry = f"{stack[-1]}: {op}"
                if entry not in found:
                    found.append(entry)
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Recorder():
            module(*example)
    except Exception:  # the op locator is best effort: the export error is what matters
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found


def export_error(module: nn.Module, example: tuple, error: Exception) -> ExportError:
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(error).split()))
    # torch's tracing exporter names ops aten::name, the dynamo one aten.name.overload.
    match = re.search(r"aten(?:::|\.)([A-Za-z0-9_]+)", text)
    culprits = []
    if match:
        culprits = locate_ops(module, example, re.compile(f"^aten::{re.escape(match[1])}$"))
    if not culprits:
        culprits = locate_ops(module, example, SUSPECT_ATEN)
    where = f" (called at {'; '.join(culprits)})" if culprits else ""
    if match:
        return ExportError(
            f"the model cannot be exported to ONNX: unsupported op aten::{match[1]}{where}"
        )
    # torch's exporters wrap the cause in pages of advice: name the innermost exception.
    cause = one_line(exception_chain(error)[-1])
    return ExportError(f"the model cannot be exported to ONNX: {cause}{where}")
