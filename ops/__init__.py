"""favor.ops: random-feature attention written so that tracing it gives a clean static graph.

Projections are constants drawn on the host, causal attention is chunked prefix sums, and the
recurrent state has a constant size. See :class:`FavorAttention`. Kernels and projections are
looked up by name in :data:`KERNEL_REGISTRY` and :data:`PROJECTION_REGISTRY`.
"""

from .attention import FavorAttention
from .attention_config import AttentionConfig
from .features import KERNEL_REGISTRY, KERNELS, Kernel, get_kernel
from .fusion import causal_layers, fixed_length_attention, fused_causal_attention
from .lara import LaraAttention
from .multihead import MultiheadFavorAttention
from .performer_compat import CompatAttention, CompatLM, CompatPerformer
from .projections import PROJECTION_REGISTRY, PROJECTIONS, Projection, get_projection

__all__ = [
    "KERNELS",
    "KERNEL_REGISTRY",
    "PROJECTIONS",
    "PROJECTION_REGISTRY",
    "AttentionConfig",
    "CompatAttention",
    "CompatLM",
    "CompatPerformer",
    "FavorAttention",
    "Kernel",
    "LaraAttention",
    "MultiheadFavorAttention",
    "Projection",
    "causal_layers",
    "fixed_length_attention",
    "fused_causal_attention",
    "get_kernel",
    "get_projection",
]
