"""Small performer-pytorch models, and user modules built around its layers, to import."""

from __future__ import annotations

import torch
from performer_pytorch import FastAttention, Performer, PerformerLM, SelfAttention
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

VOCAB, MAX_LEN, DIM, HEADS, DIM_HEAD = 40, 64, 32, 2, 16
STACK_SIZES = dict(dim=DIM, depth=2, heads=HEADS, dim_head=DIM_HEAD, nb_features=16)
LM_SIZES = dict(num_tokens=VOCAB, max_seq_len=MAX_LEN, **STACK_SIZES)
# The generic export path needs the user modules' input declared.
USER_INPUTS = [f"x:batch,seq,{DIM}:float32"]


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` in eval mode with noise added to every parameter, so that norm gains, biases
    and ReZero's near-zero gate all weigh in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        flat = parameters_to_vector(model.parameters())
        noise = torch.randn(flat.shape, generator=generator)
        vector_to_parameters(flat + 0.1 * noise, model.parameters())
    return model.eval()


def performer_lm(seed: int = 0, **options: object) -> nn.Module:
    """A ``PerformerLM`` of :data:`LM_SIZES` with ``options``, perturbed."""
    torch.manual_seed(seed)
    return perturbed(PerformerLM(**{**LM_SIZES, **options}))


def performer_stack(seed: int = 0, **options: object) -> nn.Module:
    """A ``Performer`` of :data:`STACK_SIZES` with ``options``, perturbed."""
    torch.manual_seed(seed)
    return perturbed(Performer(**{**STACK_SIZES, **options}))


class WrappedPerformer(nn.Module):
    """A ``Performer`` stack between two Linear layers: ``x (B, N, DIM)`` -> ``(B, N, DIM)``."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(DIM, DIM)
        self.body = Performer(causal=causal, **STACK_SIZES)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(x)))


class AttentionBlock(nn.Module):
    """One performer ``SelfAttention`` layer in a residual block: ``x (B, N, DIM)`` -> same."""

    def __init__(self, causal: bool = False, **attention_options: object) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.attn = SelfAttention(
            DIM, causal=causal, heads=HEADS, dim_head=DIM_HEAD, nb_features=16,
            **attention_options,
        )  # fmt: skip
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.attn(self.norm(x)))


class FastAttentionBlock(nn.Module):
    """A bare performer ``FastAttention`` behind the user's own projections:
    ``x (B, N, DIM)`` -> same, through q, k, v of ``(B, HEADS, N, DIM_HEAD)``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.fast = FastAttention(DIM_HEAD, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, HEADS, DIM_HEAD).permute(2, 0, 3, 1, 4)
        return self.fast(*qkv).transpose(1, 2).reshape(batch, length, DIM)
