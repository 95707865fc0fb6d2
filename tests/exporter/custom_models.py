"""Models outside favor's allow-list, used to test declared inputs and export failures."""

import torch
from torch import nn

from favor.ops import MultiheadFavorAttention


class TinyBlock(nn.Module):
    """A bidirectional FAVOR block on ``(B, N, dim)`` float inputs; outputs ``(out, mean)``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.attn = MultiheadFavorAttention(dim, heads, nb_features=8)

    def config(self) -> dict:
        return {"dim": self.dim, "heads": self.heads}

    def forward(self, x: torch.Tensor):
        out, _ = self.attn(x, x, x)
        return out, out.mean(dim=1)


class Decomposer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, _ = torch.linalg.qr(x)
        return q


class UsesQR(nn.Module):
    """Calls QR in forward, in submodule ``inner.decompose``: not exportable."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.inner.add_module("decompose", Decomposer())

    def config(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class Noise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class UsesRandom(nn.Module):
    """Draws random numbers in forward, in submodule ``noise``: refused."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = Noise()

    def config(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(x) * 2
