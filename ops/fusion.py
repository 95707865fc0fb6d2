"""The export-time switch that routes a model's causal attention through the fused op.

:func:`fused_causal_attention` sets :attr:`FavorAttention.fused` on every causal layer of a model
for the duration of an export, so that the trace records :mod:`favor.ops.fused`'s one op instead
of the chunked graph. PyTorch outputs are the same either way.
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
    layers = causal_layers(model)
    previous = [layer.fused for layer in layers]
    for layer in layers:
        layer.fused = True
    try:
        yield
    finally:
        for layer, fused in zip(layers, previous, strict=True):
            layer.fused = fused
