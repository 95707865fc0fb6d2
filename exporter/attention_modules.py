"""Which submodules of a model are attention layers, in a Python model or a TorchScript one.

TorchScript (a scripted or traced module, or an archive loaded back) keeps a submodule's original
class name but not its class: there both functions here go by that name. The exporter treats
attention layers' tensors apart: a half export keeps them in float32 (:mod:`.precision`) and
int8 quantization leaves the MatMuls derived from their buffers float (:mod:`.quantize`).
"""

from __future__ import annotations

import torch
from torch import nn

from favor.ops import FavorAttention, LaraAttention

ATTENTION_CLASSES: tuple[type[nn.Module], ...] = (FavorAttention, LaraAttention)
_ATTENTION_NAMES = frozenset(cls.__name__ for cls in ATTENTION_CLASSES)


def class_name(module: nn.Module) -> str:
    """The name of ``module``'s Python class, also where TorchScript compiled it away."""
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name
    return type(module).__name__


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`ATTENTION_CLASSES`, or TorchScript made from one."""
    if isinstance(module, torch.jit.ScriptModule):
        return class_name(module) in _ATTENTION_NAMES
    return isinstance(module, ATTENTION_CLASSES)
