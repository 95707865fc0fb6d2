"""Rotary position embedding (RoPE) with explicit positions.

Positions are passed in rather than inferred from the input length, so a sequence fed in chunks
or token by token gets the same rotation as when fed whole. Rotation keeps vector norms, which is
what the random-feature estimators need: only the angles between queries and keys change.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates pairs ``(x_i, x_{i + D/2})`` of ``(B, H, N, D)`` by position-dependent angles."""

    inv_freq: torch.Tensor

    def __init__(self, dim_head: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim_head % 2:
            raise ValueError(f"rotary embeddings need an even dim_head, got {dim_head}")
        exponents = torch.arange(0, dim_head, 2, dtype=torch.float64) / dim_head
        # Derived from dim_head and base, so it is not part of the state_dict.
        self.register_buffer("inv_freq", (base**-exponents).to(torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x (B, H, N, D)``, ``positions (B, N)`` integer -> rotated ``x``, same dtype."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (B, N, D/2)
        cos = torch.cos(angles).unsqueeze(1)
        sin = torch.sin(angles).unsqueeze(1)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half].to(torch.float32), x[..., half:].to(torch.float32)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return rotated.to(x.dtype)
