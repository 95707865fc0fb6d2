"""``FavorAttention``: random-feature attention with SDPA's call shapes, ready for export."""

from __future__ import annotations

import torch
from torch import nn

from .calibration import KernelCalibration
from .causal import causal_chunked, causal_step
from .checks import (
    check_choice,
    check_key_padding_mask,
    check_positive_int,
    check_qkv,
    check_state,
    tracing,
)
from .configurable import Configurable
from .features import Kernel, get_kernel, key_features, query_features
from .fused import causal_linear_attention
from .noncausal import noncausal
from .numerics import append_ones, compute_dtype, divide, saturate_cast
from .projections import (
    ORF_NORMS,
    Projection,
    draw_feature_weights,
    draw_projection,
    get_projection,
)
from .static import causal_fixed

# Lower bound on |denominator| for TrigRF's signed estimate. Positive kernels only need to avoid
# 0 / 0 and use the dtype's smallest normal number instead; so do sparse-grid weighted ones,
# whose key features can be far below 1 (see FavorAttention.denominator_floor).
SIGNED_DENOMINATOR_FLOOR = 1e-6


class FavorAttention(Configurable, nn.Module):
    """Random-feature approximation of ``F.scaled_dot_product_attention``.

    ``q, k (B, H, N, D)`` and ``v (B, H, N, Dv)`` with ``D = dim_head``; output ``(B, H, N, Dv)``
    in ``v``'s dtype. It applies SDPA's ``1 / sqrt(D)`` scaling, so with enough features it
    approximates ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)``.

    The projection ``(nb_features, D)`` is a buffer drawn from ``seed`` at construction, saved in
    the state_dict, and replaced only by :meth:`redraw_`; forward never draws random numbers.

    Causal attention runs as chunked prefix sums (``chunk_size`` tokens per chunk). Its state
    ``(B, H, M', Dv + 1)`` holds ``sum phi(k) v^T`` with ``sum phi(k)`` as the last column, where
    ``M'`` is :attr:`feature_dim`; pass it back with ``state=`` to continue a sequence in chunks
    of any length, or token by token with :meth:`step`.
    """

    # Constructor arguments, in the order config() gives them (checkpoints, the manifest).
    CONFIG = (
        "dim_head",
        "nb_features",
        "causal",
        "kernel",
        "projection",
        "seed",
        "chunk_size",
        "orf_norm",
    )

    projection_matrix: torch.Tensor

    def __init__(
        self,
        dim_head: int,
        nb_features: int = 256,
        *,
        causal: bool = False,
        kernel: str = "posrf",
        projection: str = "orf",
        seed: int = 0,
        chunk_size: int = 64,
        orf_norm: str = "chi",
    ) -> None:
        super().__init__()
        self.dim_head = check_positive_int("dim_head", dim_head)
        self.nb_features = check_positive_int("nb_features", nb_features)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.kernel = get_kernel(kernel).name
        self.projection = get_projection(projection).name
        self.orf_norm = check_choice("orf_norm", orf_norm, ORF_NORMS)
        self.causal = bool(causal)
        self.seed = int(seed)
        # Export-time switch (favor.ops.fusion.fused_causal_attention): trace the causal
        # contraction as one op that ONNX Runtime runs fused. Not part of the configuration:
        # outputs are the same either way.
        self.fused = False
        # Export-time switch (favor.ops.static.fixed_length_attention): trace causal attention
        # for the one length of a fixed-shape graph, without prefix sums. Outputs are the same.
        self.fixed_length = False
        self.learnable_projection = (
            self.projection_spec.module(self.nb_features, self.dim_head, self.seed)
            if self.projection_spec.learnable
            else None
        )
        self.calibration = (
            KernelCalibration(self.kernel, self.dim_head) if self.kernel_spec.parametric else None
        )
        self.register_buffer("projection_matrix", self._draw(self.seed))
        # Quadrature projections weight each feature's term (signed): (M',) on the query side.
        self.register_buffer("feature_weights", self._draw_feature_weights(self.seed))

    @property
    def kernel_spec(self) -> Kernel:
        """The registered :class:`~favor.ops.features.Kernel` that ``kernel`` names."""
        return get_kernel(self.kernel)

    @property
    def projection_spec(self) -> Projection:
        """The registered :class:`~favor.ops.projections.Projection` that ``projection`` names."""
        return get_projection(self.projection)

    @property
    def feature_dim(self) -> int:
        """Length ``M'`` of each feature vector (``2 * nb_features`` for paired kernels)."""
        return self.kernel_spec.feature_dim(self.nb_features)

    def _draw(self, seed: int) -> torch.Tensor:
        return draw_projection(
            self.projection, self.nb_features, self.dim_head, seed=seed, orf_norm=self.orf_norm
        )

    def _draw_feature_weights(self, seed: int) -> torch.Tensor | None:
        weights = draw_feature_weights(self.projection, self.nb_features, self.dim_head, seed=seed)
        if weights is None or not self.kernel_spec.paired:
            return weights
        return torch.cat([weights, weights])  # paired kernels: both halves share a direction

    @torch.no_grad()
    def redraw_(self, seed: int | None = None) -> int:
        """Replace the projection by a fresh draw and return the seed used.

        With ``seed=None`` the seed comes from torch's global generator, so ``torch.manual_seed``
        makes a training run's redraws reproducible. Never call this inside a traced forward.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        if self.learnable_projection is not None:
            self.learnable_projection.reset_(seed)
        self.projection_matrix.copy_(self._draw(seed))
        if self.feature_weights is not None:
            self.feature_weights.copy_(self._draw_feature_weights(seed))
        self.seed = int(seed)
        return self.seed

    def projection_weights(self) -> torch.Tensor:
        """``W (nb_features, dim_head)``: the buffer, or recomputed from trainable parameters."""
        if self.learnable_projection is not None:
            return self.learnable_projection()
        return self.projection_matrix

    @torch.no_grad()
    def fold_projection_(self) -> None:
        """Freeze a learnable projection into the constant buffer, as export needs.

        Afterwards forward reads the buffer, so a traced graph holds one constant matrix instead
        of the Hadamard products; outputs do not change. A no-op for fixed projections.
        """
        if self.learnable_projection is not None:
            self.projection_matrix.copy_(self.learnable_projection())
            self.learnable_projection = None

    @torch.no_grad()
    def calibrate_(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> None:
        """Accumulate ``q (B, H, Nq, D)`` and ``k (B, H, Nk, D)`` into the kernel's statistics.

        OPRF and SADERF then take their parameters from everything accumulated, in causal and
        non-causal mode alike; GERF restarts its trainable parameter from the OPRF optimum. A
        no-op for kernels without data-dependent parameters. See :mod:`favor.ops.calibration`.
        """
        if self.calibration is None:
            return
        x, y = self._scaled(q, k)
        x_valid, y_valid = self._valid_tokens(q, k, key_padding_mask)
        self.calibration.update_(x, y, x_valid, y_valid)

    def kernel_parameters(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(a, psi)`` as calibrated: the exponential family's ``a`` and SADERF's ``psi (D,)``.

        These are what causal mode (and non-causal mode once calibrated) uses; ``(None, None)``
        for kernels without parameters.
        """
        if self.calibration is None:
            return None, None
        return self.calibration.frozen_parameters(self.calibration.statistics.dtype)

    def _scaled(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(q.dtype)
        scale = self.dim_head**-0.25
        return q.to(dtype) * scale, k.to(dtype) * scale

    @staticmethod
    def _valid_tokens(
        q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(B, 1, N, 1)`` weights of real tokens for the statistics, or None for all.

        In self-attention (as long a query as key sequence) padded positions are padded queries
        too, and must not move the statistics either.
        """
        if key_padding_mask is None:
            return None, None
        valid = (~key_padding_mask)[:, None, :, None].to(torch.float32)
        return (valid if q.shape[-2] == k.shape[-2] else None), valid

    def feature_maps(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stabilized features ``(..., D) -> (..., M')`` in the compute dtype, after scaling."""
        x, y = self._scaled(q, k)
        w = self.projection_weights().to(x.dtype)
        a = None
        if self.calibration is not None:
            from_call = not (self.causal or self.calibration.calibrated)
            x_valid, y_valid = self._valid_tokens(x, y, key_padding_mask)
            a, psi = self.calibration(x, y, x_valid, y_valid, from_call=from_call)
            a = a.to(x.dtype)
            if psi is not None:
                x, y = x * psi.to(x.dtype), y / psi.to(x.dtype)
        phi_q = query_features(self.kernel, x, w, a=a)
        if self.feature_weights is not None:
            phi_q = phi_q * self.feature_weights.to(x.dtype)
        phi_k = key_features(self.kernel, y, w, a=a)
        return phi_q, phi_k

    def state_shape(self, batch: int, heads: int, dim_value: int) -> tuple[int, int, int, int]:
        """Shape of the carried state: ``(B, H, M', Dv + 1)``."""
        return (batch, heads, self.feature_dim, dim_value + 1)

    def initial_state(
        self, batch: int, heads: int, dim_value: int, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """An empty float32 state, for callers that want to start :meth:`step` explicitly."""
        return torch.zeros(self.state_shape(batch, heads, dim_value), device=device)

    def _check_state_is_consistent(self) -> None:
        if self.kernel_spec.data_dependent and not (self.causal or self.calibration.calibrated):
            raise ValueError(
                f"kernel {self.kernel!r} takes its parameters from each call's q and k until it is "
                "calibrated, so a state carried between calls would mix feature maps; call "
                "calibrate_() first"
            )

    def denominator_floor(self) -> float | None:
        """Smallest denominator magnitude for signed estimates; None when it is never negative.

        TrigRF's stabilized features have a known scale (queries in [-1, 1], keys at least 1),
        so a fixed floor bounds its outputs. Sparse-grid weights make an exponential kernel's
        estimate signed too, but its key features can legitimately be far below 1: only an
        exact zero is guarded there.
        """
        if self.kernel_spec.signed:
            return SIGNED_DENOMINATOR_FLOOR
        if self.projection_spec.weighted:
            return torch.finfo(torch.float32).tiny
        return None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        *,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)``, ``v (B, H, Nk, Dv)`` -> ``(B, H, Nq, Dv)``.

        ``key_padding_mask (B, Nk)`` is True at padding keys, which then contribute nothing.
        ``state (B, H, M', Dv + 1)`` stands for keys and values seen in earlier calls. With
        ``return_state=True`` the result is ``(out, new_state)``.
        """
        if not tracing():
            check_qkv(q, k, v, dim_head=self.dim_head, causal=self.causal)
            batch, heads, length = k.shape[:3]
            check_key_padding_mask(key_padding_mask, batch, length)
            check_state(state, self.state_shape(batch, heads, v.shape[-1]))
        if state is not None or return_state:
            self._check_state_is_consistent()
        phi_q, phi_k = self.feature_maps(q, k, key_padding_mask)
        if key_padding_mask is not None:
            # After the feature map: phi(0) is not 0, so masking keys before it would leak.
            phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        values = append_ones(v.to(phi_k.dtype))
        if state is not None:
            state = state.to(phi_k.dtype)
        if self.causal:
            contraction = (
                causal_fixed
                if self.fixed_length
                else causal_linear_attention
                if self.fused
                else causal_chunked
            )
            out, new_state = contraction(phi_q, phi_k, values, state, chunk_size=self.chunk_size)
        else:
            out, new_state = noncausal(phi_q, phi_k, values, state)
        out = saturate_cast(divide(out, signed_floor=self.denominator_floor()), v.dtype)
        return (out, new_state) if return_state else out

    def step(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One causal token: ``q_t, k_t (B, H, D)``, ``v_t (B, H, Dv)`` -> ``(out_t, state)``.

        ``out_t`` is ``(B, H, Dv)``.

        ``state=None`` starts an empty sequence. The new state has the same size as the old.
        """
        if not self.causal:
            raise ValueError(
                "step() is the recurrent form of causal attention; build with causal=True"
            )
        batch, heads = k_t.shape[:2]
        if not tracing():
            check_qkv(q_t, k_t, v_t, dim_head=self.dim_head, causal=True, rank=3)
            check_state(state, self.state_shape(batch, heads, v_t.shape[-1]))
        phi_q, phi_k = self.feature_maps(q_t, k_t)
        if state is None:
            state = phi_k.new_zeros(self.state_shape(batch, heads, v_t.shape[-1]))
        out, new_state = causal_step(
            phi_q, phi_k, append_ones(v_t.to(phi_k.dtype)), state.to(phi_k.dtype)
        )
        return saturate_cast(
            divide(out, signed_floor=self.denominator_floor()), v_t.dtype
        ), new_state
