"""``LaraAttention``: linear randomized attention (LARA; Zheng, Wang and Kong, ICML 2022).

Notation. Queries and keys are scaled by ``D**-0.25``, ``x_n = q_n D**-0.25`` and
``y_m = k_m D**-0.25``, so ``exp(x . y)`` is SDPA's softmax kernel. With the positive random
feature ``xi(x, w) = exp(w . x - |x|^2 / 2)`` and ``N(w) = N(w; 0, I)``,
``exp(x . y) = E_N[xi(x, w) xi(y, w)]``, so softmax attention is the self-normalized expectation

    out_n = E_N[xi(x_n, w) sum_m xi(y_m, w) v_m] / E_N[xi(x_n, w) sum_m xi(y_m, w)].

FAVOR+ estimates both expectations with samples of ``N`` itself. LARA samples from proposals
closer to where the integrand lives. The sequence is cut into ``C`` contiguous segments, and
proposal ``c`` is ``q_c = N(mu_c, I)`` with ``mu_c`` the mean of segment ``c``'s queries plus the
mean of its keys. Each proposal gets ``S = nb_features / C`` samples ``w_cs = mu_c + eps_cs``, and
the samples are combined by self-normalized multiple importance sampling (MIS): ``out_n`` is

    sum_cs a_nc(w_cs) [N(w_cs) / q_c(w_cs)] xi(x_n, w_cs) sum_m xi(y_m, w_cs) v_m

over the same sum with ``v_m`` replaced by 1. The MIS weights are the paper's query-specific ones,

    a_nc(w) = q_c(w) / sum_c' q_c'(w) + r_nc - 1 / C,    r_nc = softmax_c(x_n . xbar_c),

the balance heuristic plus how much more query ``n`` resembles segment ``c``'s mean query
``xbar_c`` than the average segment. Both parts sum to one over ``c`` for every ``w``, as MIS
needs; empty segments get ``r_nc = 0``. ``a`` dips below zero where the balance heuristic is
small and the query is unlike the segment, so, as in the authors' code, it is clipped to
:data:`ALPHA_FLOOR`, which keeps every weight, and so the denominator, positive. ``r`` is a
softmax over segments, as the paper writes it; the authors' released code normalizes it over
queries instead, which shrinks the query-specific term to ``O(1 / N)``.

The proposals depend on every token, so LARA is bidirectional only, and costs
``O(N nb_features (D + Dv))`` like FAVOR+. The textbook form of the same estimator is
:func:`favor.ops.reference.lara_reference`.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_key_padding_mask, check_positive_int, check_qkv, tracing
from .configurable import Configurable
from .numerics import append_ones, compute_dtype, divide, saturate_cast

# Lower clip on the MIS weights a_nc(w); see the module docstring.
ALPHA_FLOOR = 1e-8


def segment_one_hot(valid: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``valid (B, N)`` bool -> ``(B, N, C)`` bool segment membership; padding rows are all False.

    The ``L`` valid tokens of a row are cut into ``C`` contiguous runs: the ``i``-th valid token
    goes to segment ``floor(i C / L)``, so runs differ in length by at most one and, when
    ``L < C``, some are empty. Only tensor ops, so one exported graph serves every length.
    """
    counts = valid.long()
    # Token i is in segment c when c L <= i C < (c + 1) L: exact integer products, where the
    # dynamo exporter would turn an integer floor division into a float32 one.
    scaled_rank = ((counts.cumsum(dim=1) - 1) * num_segments).unsqueeze(-1)
    total = counts.sum(dim=1, keepdim=True)
    lower = (torch.arange(num_segments, device=valid.device) * total).unsqueeze(1)
    inside = (scaled_rank >= lower) & (scaled_rank < lower + total.unsqueeze(1))
    return inside & valid.unsqueeze(-1)


class LaraAttention(Configurable, nn.Module):
    """LARA approximation of bidirectional ``F.scaled_dot_product_attention``.

    ``q, k (B, H, N, D)`` and ``v (B, H, N, Dv)`` with ``D = dim_head``; output ``(B, H, N, Dv)``
    in ``v``'s dtype. ``nb_features`` samples in all, ``nb_features / num_proposals`` per
    proposal. See the module docstring for the estimator.

    In training mode each forward draws fresh noise ``eps (B, H, C, S, D)`` from torch's global
    generator. In eval mode it uses the buffer ``eps (C, S, D)``, drawn from ``seed`` at
    construction and saved in the state_dict, so eval outputs are deterministic and the exported
    graph holds no random ops.
    """

    # Constructor arguments, in the order config() gives them (checkpoints, the manifest).
    CONFIG = ("dim_head", "nb_features", "num_proposals", "seed", "causal")

    eps: torch.Tensor

    def __init__(
        self,
        dim_head: int,
        nb_features: int = 64,
        *,
        num_proposals: int = 8,
        seed: int = 0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if causal:
            raise NotImplementedError(
                "LaraAttention is bidirectional only: its proposals are segment means over the "
                "whole sequence, which would leak future tokens into causal attention"
            )
        self.dim_head = check_positive_int("dim_head", dim_head)
        self.nb_features = check_positive_int("nb_features", nb_features)
        self.num_proposals = check_positive_int("num_proposals", num_proposals)
        if nb_features % num_proposals:
            raise ValueError(
                f"nb_features={nb_features} must be a multiple of num_proposals={num_proposals}: "
                "each proposal draws nb_features / num_proposals samples"
            )
        self.samples_per_proposal = nb_features // num_proposals
        self.seed = int(seed)
        self.causal = False
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.num_proposals, self.samples_per_proposal, self.dim_head)
        self.register_buffer("eps", torch.randn(shape, generator=generator))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``q, k (B, H, N, D)``, ``v (B, H, N, Dv)`` -> ``(B, H, N, Dv)``.

        ``key_padding_mask (B, N)`` is True at padding tokens: their keys contribute nothing, and
        neither their queries nor their keys move the proposals.
        """
        if not tracing():
            check_qkv(q, k, v, dim_head=self.dim_head, causal=False)
            if q.shape[2] != k.shape[2]:
                raise ValueError(
                    "LaraAttention is self-attention: q and k need one length, since proposals "
                    f"pair segment means of both; got Nq={q.shape[2]} and Nk={k.shape[2]}"
                )
            check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[2])
        dtype = compute_dtype(q.dtype)
        scale = self.dim_head**-0.25
        x, y = q.to(dtype) * scale, k.to(dtype) * scale
        if self.training:
            noise = torch.randn((*x.shape[:2], *self.eps.shape), dtype=dtype, device=x.device)
        else:
            noise = self.eps.to(dtype)
        if key_padding_mask is None:
            valid = torch.ones_like(x[:, 0, :, 0], dtype=torch.bool)
        else:
            valid = ~key_padding_mask
        lowest = torch.finfo(dtype).min

        # Proposal means mu (B, H, C, D) from segment means over valid tokens only.
        members = segment_one_hot(valid, self.num_proposals).to(dtype).transpose(1, 2)
        sizes = members.sum(dim=-1)  # (B, C)
        members = (members / sizes.clamp(min=1).unsqueeze(-1)).unsqueeze(1)
        x_bar, y_bar = members @ x, members @ y
        mu = x_bar + y_bar
        w = mu.unsqueeze(-2) + noise  # (B, H, C, S, D)
        half_sq_mu = 0.5 * (mu * mu).sum(dim=-1)
        # log q_c(w_cs) - log N(w_cs) = w . mu_c - |mu_c|^2 / 2, for the sample's own proposal ...
        log_own = ((w * mu.unsqueeze(-2)).sum(dim=-1) - half_sq_mu.unsqueeze(-1)).flatten(2)
        w = w.flatten(2, 3)  # (B, H, M, D), sample j = c S + s
        # ... and for every proposal, log_q (B, H, M, C), for the balance heuristic
        # q_c(w_j) / sum_c' q_c'(w_j). (torch.logsumexp would become a ReduceLogSumExp that the
        # dynamo exporter's opset-18-to-17 conversion breaks.)
        log_q = w @ mu.transpose(-1, -2) - half_sq_mu.unsqueeze(-2)
        top = log_q.amax(dim=-1).detach()
        balance = torch.exp(log_own - top) / torch.exp(log_q - top.unsqueeze(-1)).sum(dim=-1)
        balance = balance.unsqueeze(-2)  # (B, H, 1, M)

        # r_nc - 1/C, repeated over each proposal's S samples; empty segments have r_nc = 0.
        occupied = (sizes > 0)[:, None, None, :]
        r = torch.softmax((x @ x_bar.transpose(-1, -2)).masked_fill(~occupied, lowest), dim=-1)
        r = (r - 1.0 / self.num_proposals).unsqueeze(-1)
        r = r.expand(-1, -1, -1, -1, self.samples_per_proposal).flatten(-2)
        log_alpha = torch.log((balance + r).clamp(min=ALPHA_FLOOR))  # (B, H, N, M)

        # Key side: log xi(y_m, w_j) less a per-sample max over valid keys, so no key feature
        # exceeds 1 and none depends on a query. The shift comes back on the query side.
        pad = ~valid[:, None, :, None]
        log_k = (y @ w.transpose(-1, -2) - 0.5 * (y * y).sum(dim=-1, keepdim=True)).masked_fill(
            pad, lowest
        )
        shift = log_k.amax(dim=-2, keepdim=True).detach()  # (B, H, 1, M)
        # The fill matters only when every key is padding (shift = lowest, exp(0) = 1).
        features_k = torch.exp(log_k - shift).masked_fill(pad, 0.0)
        summary = features_k.transpose(-1, -2) @ append_ones(v.to(dtype))  # (B, H, M, Dv + 1)

        # Query side: log of a_nj N(w_j) / q_c(w_j) xi(x_n, w_j) exp(shift_j), without the
        # per-query -|x_n|^2 / 2, then less its max over samples: per-query constants cancel.
        logits = log_alpha + x @ w.transpose(-1, -2) - log_own.unsqueeze(-2) + shift
        weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())
        return saturate_cast(divide(weights @ summary, signed_floor=None), v.dtype)
