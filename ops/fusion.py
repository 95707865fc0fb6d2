"""The export-time switches that route a model's causal attention through another form.

:func:`fused_causal_attention` sets :attr:`FavorAttention.fused` on every causal layer of a model
for the duration of an export, so that the trace records :mod:`favor.ops.fused`'s one op instead
of the chunked graph. :func:`fixed_length_attention` sets :attr:`FavorAttention.fixed_length`,
so that a trace at fixed shapes records :mod:`favor.ops.static`'s step or single block. PyTorch
outputs are the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .attention import FavorAttention


def causal_layers(model: nn.Module) -> list[FavorAttention]:
    """Every causal :class:`FavorAttention` inside ``model``: the layers the fused op can serve."""
    return [m for m in model.modules() if isinstance(m, FavorAttention) and m.causal]


@contextlib.contextmanager
def fused_causal_attention(model: nn.Module) -> Iterator[None]:
    """Route every causal :class:`FavorAttention` in ``model`` through the fused op.

    Outputs are unchanged in PyTorch; only a graph traced inside the context differs. The layers
    are switched back on exit, even after an error.
    """
    with switched(causal_layers(model), "fused", True):
        yield


@contextlib.contextmanager
def fixed_length_attention(model: nn.Module) -> Iterator[None]:
    """Route every causal :class:`FavorAttention` in ``model`` through
    :func:`favor.ops.static.causal_fixed`, for tracing at fixed shapes only.

    PyTorch outputs are unchanged; the layers are switched back on exit, even after an error.
    """
    with switched(causal_layers(model), "fixed_length", True):
        yield


@contextlib.contextmanager
def switched(layers: list[FavorAttention], attribute: str, value: bool) -> Iterator[None]:
    """Set the export-time switch ``attribute`` of every layer to ``value``; restore on exit."""
    previous = [getattr(layer, attribute) for layer in layers]
    for layer in layers:
        setattr(layer, attribute, value)
    try:
        yield
    finally:
        for layer, before in zip(layers, previous, strict=True):
            setattr(layer, attribute, before)
