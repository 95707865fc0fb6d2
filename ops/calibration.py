"""Data-dependent parameters of the OPRF, GERF and SADERF kernels, and how they are calibrated.

All three are members of the positive exponential family of
:func:`favor.ops.features.random_features`, ``f(x) ∝ exp(a |w|^2 + b w . x - |x|^2 / 2)`` with
``b = sqrt(1 - 4a)``, which is unbiased for every ``a < 1/4``:

* OPRF (Likhosherstov et al. 2022, "Chefs' Random Tables") picks the ``a`` that minimizes the
  log second moment of the estimator averaged over all query-key pairs. With
  ``rho = mean_ij |x_i + y_j|^2 / d`` the minimizer has the closed form
  ``a = (1 - 2 rho - sqrt((2 rho + 1)^2 + 8 rho)) / 16`` (always ``<= 0``; ``rho = 0`` gives
  PosRF).
* GERF makes ``a`` trainable, parameterized as ``a = (1 - exp(theta)) / 8 < 1/8`` so that the
  estimator's variance stays finite; ``theta = 0`` is PosRF. Only the real member of the paper's
  family (``s = +1``) is offered: the other needs complex numbers.
* SADERF (Likhosherstov et al. 2023, "Dense-Exponential Random Features") first rescales
  coordinates, ``x -> psi * x`` and ``y -> y / psi``, which leaves ``x . y`` unchanged. The
  diagonal ``psi`` minimizing the same objective is ``psi_l = (mean y_l^2 / mean x_l^2)^(1/4)``;
  OPRF's ``a`` is then chosen on the rescaled data.

Every parameter is a closed form of four per-coordinate statistics (the means of ``x``, ``y``,
``x^2`` and ``y^2``), computed in real arithmetic with no inverse or decomposition. In a
non-causal call that has not been calibrated they come from the call's own queries and keys.
Causal attention must never look at later tokens, so it reads frozen statistics instead:
:meth:`KernelCalibration.update_` (``FavorAttention.calibrate_``, or the :func:`calibrating`
context around a model's forward) accumulates them into buffers that travel in the state_dict.
Uncalibrated causal modules use all-zero statistics, which give PosRF exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# psi^4 is a ratio of mean squares; bounding it keeps psi within [0.03, 32] so a coordinate that
# is constant zero in the queries or the keys cannot blow up the other side.
PSI_RATIO_BOUND = 1e6


def token_moments(
    x: torch.Tensor, valid: torch.Tensor | None, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums of ``x`` and ``x^2`` and the token count over ``dims``, skipping invalid tokens.

    ``x (B, H, N, D)``, ``valid`` broadcastable to ``(B, H, N, 1)`` (1.0 for real tokens) or
    None. Returns ``(sum_x, sum_x2, count)`` reduced over ``dims`` with ``keepdim=True``.
    """
    if valid is None:
        count = torch.ones_like(x[..., :1]).sum(dim=dims, keepdim=True)
        return x.sum(dim=dims, keepdim=True), (x * x).sum(dim=dims, keepdim=True), count
    weighted = x * valid
    count = torch.broadcast_to(valid, x[..., :1].shape).sum(dim=dims, keepdim=True)
    return weighted.sum(dim=dims, keepdim=True), (weighted * x).sum(dim=dims, keepdim=True), count


def call_statistics(
    x: torch.Tensor,
    y: torch.Tensor,
    x_valid: torch.Tensor | None = None,
    y_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-(batch, head) statistics of queries ``x (B, H, Nq, D)`` and keys ``y (B, H, Nk, D)``.

    Returns ``(B, H, 4, D)``: the means of ``x``, ``y``, ``x^2`` and ``y^2`` over valid tokens.
    """
    sx, sx2, nx = token_moments(x, x_valid, (-2,))
    sy, sy2, ny = token_moments(y, y_valid, (-2,))
    # A call whose keys are all padding has no statistics; clamping the count gives zeros (PosRF).
    nx, ny = nx.clamp(min=1), ny.clamp(min=1)
    return torch.cat([sx / nx, sy / ny, sx2 / nx, sy2 / ny], dim=-2)


def oprf_coefficient(rho: torch.Tensor) -> torch.Tensor:
    """OPRF's variance-optimal ``a`` for ``rho = mean_ij |x_i + y_j|^2 / d`` (any shape)."""
    rho = rho.clamp(min=0)
    return (1 - 2 * rho - torch.sqrt((2 * rho + 1) ** 2 + 8 * rho)) / 16


def saderf_scale(statistics: torch.Tensor) -> torch.Tensor:
    """SADERF's ``psi (..., D)`` from statistics ``(..., 4, D)``; all-zero statistics give 1."""
    ratio = (statistics[..., 3, :] + 1e-30) / (statistics[..., 2, :] + 1e-30)
    return ratio.clamp(1 / PSI_RATIO_BOUND, PSI_RATIO_BOUND) ** 0.25


def family_parameters(
    kernel: str, statistics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(a (..., 1, 1), psi (..., 1, D) or None)`` for ``oprf``/``saderf`` from ``(..., 4, D)``.

    ``mean_ij |x_i + y_j|^2`` expands into per-coordinate statistics, so no pair is formed; for
    SADERF they are those of the rescaled data, and ``x . y`` is unchanged by the rescaling.
    """
    mean_x, mean_y, mean_x2, mean_y2 = statistics.unbind(dim=-2)
    psi = saderf_scale(statistics) if kernel == "saderf" else None
    # Rescaling by psi changes the squared norms only: psi cancels in the cross term.
    squares = mean_x2 + mean_y2 if psi is None else mean_x2 * psi**2 + mean_y2 / psi**2
    rho = (squares + 2 * mean_x * mean_y).sum(dim=-1) / statistics.shape[-1]
    a = oprf_coefficient(rho)[..., None, None]
    return a, (None if psi is None else psi.unsqueeze(-2))


class KernelCalibration(nn.Module):
    """The parameters of one OPRF, GERF or SADERF attention module.

    Buffers ``statistics (4, D)`` (running means of queries, keys and their squares, scaled as
    the features see them) and ``counts (2,)`` (query and key tokens seen) hold what
    :meth:`update_` accumulated; GERF adds the trainable scalar ``theta``.
    """

    statistics: torch.Tensor
    counts: torch.Tensor

    def __init__(self, kernel: str, dim: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.register_buffer("statistics", torch.zeros(4, dim))
        self.register_buffer("counts", torch.zeros(2))
        self.theta = nn.Parameter(torch.zeros(())) if kernel == "gerf" else None
        # Set by the `calibrating` context: forward then feeds its inputs to update_().
        self.recording = False
        self.calibrated = False
        # Python state for the trace: `calibrated` decides the graph, so it follows loaded buffers.
        self.register_load_state_dict_post_hook(_sync_calibrated)

    @torch.no_grad()
    def update_(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_valid: torch.Tensor | None = None,
        y_valid: torch.Tensor | None = None,
    ) -> None:
        """Fold scaled queries ``x (..., Nq, D)`` and keys ``y (..., Nk, D)`` into the means.

        GERF's ``theta`` is reset to the OPRF optimum of everything seen so far: a starting
        point that training then moves.
        """
        dims = tuple(range(x.dim() - 1))
        sx, sx2, nx = token_moments(x.float(), x_valid, dims)
        sy, sy2, ny = token_moments(y.float(), y_valid, dims)
        new = torch.stack([sx.flatten(), sy.flatten(), sx2.flatten(), sy2.flatten()])
        new_counts = torch.stack([nx.flatten()[0], ny.flatten()[0]])
        totals = self.counts + new_counts
        # Per-row counts: rows 0 and 2 are query statistics, 1 and 3 key statistics.
        old_n = self.counts[[0, 1, 0, 1]].unsqueeze(-1)
        all_n = totals[[0, 1, 0, 1]].unsqueeze(-1).clamp(min=1)
        self.statistics.copy_((self.statistics * old_n + new) / all_n)
        self.counts.copy_(totals)
        self.calibrated = bool(totals.min() > 0)
        if self.theta is not None:
            a, _ = family_parameters("oprf", self.statistics)
            self.theta.copy_(torch.log(1 - 8 * a.reshape(())))

    @torch.no_grad()
    def reset_(self) -> None:
        """Forget the accumulated statistics (GERF keeps its trained ``theta``)."""
        self.statistics.zero_()
        self.counts.zero_()
        self.calibrated = False

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_valid: torch.Tensor | None = None,
        y_valid: torch.Tensor | None = None,
        *,
        from_call: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(a, psi)`` for queries ``x`` and keys ``y``: scalars/``(D,)`` or per ``(B, H)``.

        With ``from_call`` the statistics are those of ``x`` and ``y`` themselves, shapes
        ``(B, H, 1, 1)`` and ``(B, H, 1, D)``; otherwise the calibrated buffers, shapes ``()``
        and ``(D,)``.
        """
        if self.recording:
            self.update_(x, y, x_valid, y_valid)
        if from_call and self.theta is None:
            return family_parameters(self.kernel, call_statistics(x, y, x_valid, y_valid))
        return self.frozen_parameters(x.dtype)

    def frozen_parameters(
        self, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(a (), psi (D,) or None)`` from the calibrated buffers (GERF: from ``theta``)."""
        if self.theta is not None:
            return (1 - torch.exp(self.theta)) / 8, None
        a, psi = family_parameters(self.kernel, self.statistics.to(dtype))
        return a.reshape(()), (None if psi is None else psi.reshape(-1))


def _sync_calibrated(module: KernelCalibration, incompatible_keys) -> None:
    module.calibrated = bool(module.counts.min() > 0)


@contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Within this context, every OPRF/GERF/SADERF attention in ``model`` records its inputs.

    Run a few representative batches through ``model`` inside it; afterwards each module's
    parameters come from those statistics, in causal and non-causal mode alike::

        with torch.no_grad(), calibrating(lm):
            lm(tokens)
    """
    modules = [m for m in model.modules() if isinstance(m, KernelCalibration)]
    for module in modules:
        module.recording = True
    try:
        yield
    finally:
        for module in modules:
            module.recording = False
