"""``MultiheadFavorAttention``: a drop-in for ``nn.MultiheadAttention`` on FAVOR attention."""

from __future__ import annotations

import torch
from torch import nn

from .attention_config import AttentionConfig
from .checks import check_positive_int, tracing
from .rotary import RotaryEmbedding

DEFAULT_ATTENTION = AttentionConfig()


class MultiheadFavorAttention(nn.Module):
    """Multi-head random-feature attention with its own in and out projections.

    Call it like ``nn.MultiheadAttention``: ``(query, key, value, key_padding_mask, need_weights)``
    with ``(B, N, E)`` inputs when ``batch_first`` (the default) and ``(N, B, E)`` otherwise. It
    returns ``(out, None)``: attention weights are never materialized, whatever ``need_weights``
    says. Self-attention passes one tensor three times; cross-attention passes another key/value.

    Extra keywords over ``nn.MultiheadAttention``: ``state``/``return_state`` carry the causal
    state across calls (``return_state=True`` returns ``(out, None, state)``), and ``positions
    (B, Nq)`` drives the rotary embedding when ``rotary=True``. ``attention`` configures the
    :class:`~favor.ops.attention.FavorAttention` inside (default: its own defaults); its fields
    (``nb_features``, ``kernel``, ``projection``, ``seed``, ``chunk_size``, ``orf_norm``) may also
    be given as keywords, which override ``attention``'s.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        batch_first: bool = True,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        causal: bool = False,
        rotary: bool = False,
        attention: AttentionConfig = DEFAULT_ATTENTION,
        **attention_options: object,
    ) -> None:
        super().__init__()
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.batch_first = bool(batch_first)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.attention = attention.replace(**attention_options).build(self.head_dim, causal=causal)
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _check(self, name: str, x: torch.Tensor, width: int) -> None:
        if tracing():
            return
        layout = "(B, N, E)" if self.batch_first else "(N, B, E)"
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != width:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape {layout} with E={width}, got {shape}")

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, None] | tuple[torch.Tensor, None, torch.Tensor]:
        """``query (B, Nq, E)``, ``key (B, Nk, kdim)``, ``value (B, Nk, vdim)`` -> ``(B, Nq, E)``.

        ``attn_mask`` is not supported: an arbitrary mask has no linear-time form. Causality is a
        constructor argument instead.
        """
        del need_weights  # weights are never materialized; accepted for call compatibility
        if attn_mask is not None:
            raise ValueError(
                "attn_mask is not supported; build with causal=True for causal masking"
            )
        self._check("query", query, self.embed_dim)
        self._check("key", key, self.kdim)
        self._check("value", value, self.vdim)
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        if self.rotary is not None:
            if not tracing() and q.shape[2] != k.shape[2]:
                raise ValueError(
                    "rotary positions need self-attention: query and key lengths differ"
                )
            if positions is None:
                positions = torch.arange(q.shape[2], device=q.device).expand(q.shape[0], -1)
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        out, new_state = self.attention(q, k, v, key_padding_mask, state=state, return_state=True)
        out = self.out_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, None, new_state) if return_state else (out, None)
