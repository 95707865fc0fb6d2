"""favor.ops: random-feature attention written so that tracing it gives a clean static graph.

Projections are constants drawn on the host, causal attention is chunked prefix sums, and the
recurrent state has a constant size. See :class:`FavorAttention`.
"""

from .attention import FavorAttention
from .features import KERNELS
from .lara import LaraAttention
from .multihead import MultiheadFavorAttention
from .projections import PROJECTIONS

__all__ = ["KERNELS", "PROJECTIONS", "FavorAttention", "LaraAttention", "MultiheadFavorAttention"]
