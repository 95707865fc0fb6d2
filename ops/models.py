"""Small reference models built on :class:`MultiheadFavorAttention`.

They are real, trainable transformers (pre-norm blocks, rotary positions) sized for tests and the
samples, and they are what the exporter knows how to export without extra declarations.

``PerformerLM`` is a causal decoder whose forward can take and return its recurrent state: a
tuple ``(offsets (B,) int64, kv_0, ..., kv_{depth-1})`` with each ``kv_i`` of shape
``(B, heads, M', dim_head + 1)``. ``offsets`` counts the tokens each sequence has consumed, so
rotary positions continue where the last call stopped. One forward serves prompt prefill (many
tokens) and decode (one token) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention_config import AttentionConfig
from .checks import check_positive_int, tracing
from .multihead import MultiheadFavorAttention
from .numerics import compute_dtype

LMState = tuple[torch.Tensor, ...]

# Smaller than FavorAttention's 256 features: the reference models are sized for tests and samples.
REFERENCE_ATTENTION = AttentionConfig(nb_features=64)


class Block(nn.Module):
    """Pre-norm block on ``(B, N, dim)``: ``x + attn(norm(x))``, then ``x + ff(norm(x))``."""

    def __init__(
        self, dim: int, heads: int, *, causal: bool, ff_mult: int, attention: AttentionConfig
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiheadFavorAttention(
            dim, heads, causal=causal, rotary=True, attention=attention
        )
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.attn_norm(x)
        attended, _, new_state = self.attn(
            h, h, h, key_padding_mask, positions=positions, state=state, return_state=True
        )
        x = x + attended
        return x + self.ff(self.ff_norm(x)), new_state


class _Transformer(nn.Module):
    """Token embedding and a stack of blocks; layer ``i`` draws its features from ``seed + i``.

    ``attention_options`` (the :class:`AttentionConfig` fields as keywords) override
    ``attention``'s: :meth:`config` gives them flat, as checkpoints have always stored them.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        *,
        causal: bool,
        ff_mult: int,
        attention: AttentionConfig,
        attention_options: dict[str, object],
    ) -> None:
        super().__init__()
        attention = attention.replace(**attention_options)
        self._config = {
            "vocab_size": check_positive_int("vocab_size", vocab_size),
            "dim": check_positive_int("dim", dim),
            "depth": check_positive_int("depth", depth),
            "heads": check_positive_int("heads", heads),
            "ff_mult": check_positive_int("ff_mult", ff_mult),
            **attention.to_json(),
        }
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, causal=causal, ff_mult=ff_mult, attention=attention.for_layer(i))
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def config(self) -> dict:
        """Constructor arguments, JSON-ready: ``type(m)(**m.config())`` rebuilds the model."""
        return dict(self._config)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the embedding takes."""
        return self._config["vocab_size"]

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tracing():
            return
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            shape = (
                tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            )
            raise ValueError(f"tokens must be an integer tensor (B, N), got {shape}")


class PerformerLM(_Transformer):
    """Causal FAVOR language model: ``tokens (B, N)`` int64 -> logits ``(B, N, vocab_size)``.

    ``attention`` configures every layer's :class:`~favor.ops.attention.FavorAttention`; its
    fields (``nb_features=64``, ``kernel``, ``projection``, ``seed``, ``chunk_size``,
    ``orf_norm``, ...) may also be given as keywords, which override ``attention``'s.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        *,
        ff_mult: int = 4,
        attention: AttentionConfig = REFERENCE_ATTENTION,
        **attention_options: object,
    ) -> None:
        super().__init__(
            vocab_size, dim, depth, heads, causal=True, ff_mult=ff_mult, attention=attention,
            attention_options=attention_options,
        )  # fmt: skip
        self.head = nn.Linear(dim, vocab_size)

    def initial_state(self, batch: int, *, device: torch.device | str | None = None) -> LMState:
        """The state before any token: zero offsets and empty attention states."""
        offsets = torch.zeros(batch, dtype=torch.int64, device=device)
        layers = tuple(
            block.attn.attention.initial_state(
                batch, block.attn.num_heads, block.attn.head_dim, device=device
            )
            for block in self.blocks
        )
        return (offsets, *layers)

    def forward(
        self, tokens: torch.Tensor, state: LMState | None = None, *, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, LMState]:
        """``tokens (B, N)`` -> ``logits (B, N, V)``; ``(logits, new_state)`` with ``return_state``.

        With ``state`` the tokens continue the sequences that state describes.
        """
        self._check_tokens(tokens)
        batch, length = tokens.shape
        if state is None:
            state = self.initial_state(batch, device=tokens.device)
        if len(state) != len(self.blocks) + 1:  # a Python tuple: fixed at trace time too
            raise ValueError(
                f"state must be a tuple (offsets, kv_0, ..., kv_{len(self.blocks) - 1}) of "
                f"{len(self.blocks) + 1} tensors, got {len(state)}"
            )
        offsets, layer_states = state[0], state[1:]
        if not tracing() and (offsets.shape != (batch,) or offsets.is_floating_point()):
            shape = tuple(offsets.shape)
            raise ValueError(f"state offsets must be an int64 tensor ({batch},), got {shape}")
        positions = offsets.unsqueeze(1) + torch.arange(length, device=tokens.device)
        x = self.embed(tokens)
        new_states = []
        for block, layer_state in zip(self.blocks, layer_states, strict=True):
            x, layer_state = block(x, positions, state=layer_state)
            new_states.append(layer_state)
        logits = self.head(self.norm(x))
        if not return_state:
            return logits
        return logits, (offsets + length, *new_states)


class PerformerEncoder(_Transformer):
    """Bidirectional FAVOR encoder: ``tokens (B, N)`` -> hidden ``(B, N, dim)``.

    With ``num_classes`` it classifies instead: a mean over non-padding positions and a linear
    head give ``(B, num_classes)`` logits. ``attention`` and its fields as keywords work as in
    :class:`PerformerLM`.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        *,
        num_classes: int | None = None,
        ff_mult: int = 4,
        attention: AttentionConfig = REFERENCE_ATTENTION,
        **attention_options: object,
    ) -> None:
        super().__init__(
            vocab_size, dim, depth, heads, causal=False, ff_mult=ff_mult, attention=attention,
            attention_options=attention_options,
        )  # fmt: skip
        self._config["num_classes"] = num_classes
        self.classifier = (
            None
            if num_classes is None
            else nn.Linear(dim, check_positive_int("num_classes", num_classes))
        )

    def forward(
        self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens (B, N)``, ``key_padding_mask (B, N)`` (True = padding) -> ``(B, N, dim)``.

        With ``num_classes`` the result is ``(B, num_classes)`` logits instead.
        """
        self._check_tokens(tokens)
        batch, length = tokens.shape
        positions = torch.arange(length, device=tokens.device).expand(batch, -1)
        x = self.embed(tokens)
        for block in self.blocks:
            x, _ = block(x, positions, key_padding_mask)
        x = self.norm(x)
        if self.classifier is None:
            return x
        # The mean is summed in float32 for half x: a float16 sum over a long sequence overflows.
        dtype = compute_dtype(x.dtype)
        keep = (
            torch.ones_like(tokens, dtype=dtype)
            if key_padding_mask is None
            else (~key_padding_mask).to(dtype)
        )
        total = (x.to(dtype) * keep.unsqueeze(-1)).sum(1)
        pooled = total / keep.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(pooled.to(x.dtype))
