"""OPRF, GERF and SADERF parameters: the closed forms, calibration, and the papers' claim."""

import pytest
import torch
import torch.nn.functional as F

from favor.ops import FavorAttention
from favor.ops.calibration import (
    calibrating,
    call_statistics,
    family_parameters,
    oprf_coefficient,
    saderf_scale,
)
from favor.ops.models import PerformerLM
from tests.helpers import qkv, rel_rms_error


def _log_second_moment(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over all pairs of log E[f(x) f(y)]^2 for the family: what OPRF minimizes.

    Written from the Gaussian integral E exp(4a|w|^2 + 2b w.u) = (1-8a)^(-d/2) exp(2 b^2 |u|^2 /
    (1-8a)) with u = x + y, pair by pair, independently of the statistics used in the module.
    """
    d = x.shape[-1]
    u2 = ((x[:, None, :] + y[None, :, :]) ** 2).sum(-1)
    norms = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :]
    b2 = 1 - 4 * a
    log_m2 = d * torch.log(b2) - 0.5 * d * torch.log(1 - 8 * a) + 2 * b2 * u2 / (1 - 8 * a) - norms
    return log_m2.mean()


def test_oprf_coefficient_minimizes_the_log_second_moment():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    y = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 0.9
    stats = call_statistics(x[None, None], y[None, None])
    a, _ = family_parameters("oprf", stats)
    a = a.reshape(())
    grid = torch.linspace(-2.0, 0.12, 4001, dtype=torch.float64)
    objective = torch.stack([_log_second_moment(g, x, y) for g in grid])
    best = grid[objective.argmin()]
    assert abs(a.item() - best.item()) < 2 * (grid[1] - grid[0]).item(), (a, best)
    assert a < 0  # data moves OPRF away from PosRF's a = 0


def test_oprf_coefficient_is_posrf_without_data():
    assert oprf_coefficient(torch.tensor(0.0)).item() == 0.0


def test_saderf_scale_minimizes_its_objective():
    # With x -> psi x and y -> y / psi the pair-averaged log second moment depends on psi only
    # through sum_l psi_l^2 mean(x_l^2) + mean(y_l^2) / psi_l^2.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, 6)
    y = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    psi = saderf_scale(call_statistics(x[None, None], y[None, None])).reshape(-1)

    def objective(p):
        return ((p * x) ** 2).sum(-1).mean() + ((y / p) ** 2).sum(-1).mean()

    best = objective(psi)
    for coord in range(6):
        for factor in (0.9, 1.1):
            moved = psi.clone()
            moved[coord] *= factor
            assert objective(moved) > best
    assert (psi - 1).abs().max() > 0.3  # the scales really differ per coordinate


def test_call_statistics_ignore_padding():
    x = torch.randn(2, 3, 10, 4, dtype=torch.float64)
    y = torch.randn(2, 3, 10, 4, dtype=torch.float64)
    valid = torch.ones(2, 1, 10, 1, dtype=torch.float64)
    valid[0, :, 6:] = 0
    stats = call_statistics(x, y, valid, valid)
    torch.testing.assert_close(stats[:1], call_statistics(x[:1, :, :6], y[:1, :, :6]))
    torch.testing.assert_close(stats[1:], call_statistics(x[1:], y[1:]))


@pytest.mark.parametrize("kernel", ["oprf", "saderf"])
def test_uncalibrated_bidirectional_uses_each_heads_own_statistics(kernel):
    q, k, v = qkv(2, 3, 20, 16)
    attn = FavorAttention(16, 32, kernel=kernel)
    out = attn(q, k, v)
    for b, h in ((0, 0), (1, 2)):
        single = FavorAttention(16, 32, kernel=kernel)
        single.calibrate_(q[b : b + 1, h : h + 1], k[b : b + 1, h : h + 1])
        sliced = single(q[b : b + 1, h : h + 1], k[b : b + 1, h : h + 1], v[b : b + 1, h : h + 1])
        torch.testing.assert_close(out[b : b + 1, h : h + 1], sliced, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["oprf", "saderf"])
def test_uncalibrated_bidirectional_state_is_refused(kernel):
    q, k, v = qkv(1, 2, 8, 16)
    attn = FavorAttention(16, 32, kernel=kernel)
    with pytest.raises(ValueError, match=r"calibrate_\(\) first"):
        attn(q, k, v, return_state=True)
    attn.calibrate_(q, k)
    _, state = attn(q, k, v, return_state=True)
    assert state.shape == attn.state_shape(1, 2, 16)


@pytest.mark.parametrize("kernel", ["oprf", "saderf"])
def test_uncalibrated_causal_is_posrf_and_calibration_changes_it(kernel):
    q, k, v = qkv(1, 2, 30, 16)
    attn = FavorAttention(16, 32, kernel=kernel, causal=True)
    posrf = FavorAttention(16, 32, kernel="posrf", causal=True)
    torch.testing.assert_close(attn(q, k, v), posrf(q, k, v))
    attn.calibrate_(q * 0.5, k * 2.0)
    assert rel_rms_error(attn(q, k, v), posrf(q, k, v)) > 1e-3


def test_calibration_accumulates_like_one_big_batch():
    q, k, _ = qkv(2, 2, 24, 16)
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[1, 15:] = True
    once = FavorAttention(16, 32, kernel="saderf")
    once.calibrate_(q, k, key_padding_mask=mask)
    twice = FavorAttention(16, 32, kernel="saderf")
    twice.calibrate_(q[:1], k[:1])
    twice.calibrate_(q[1:, :, :15], k[1:, :, :15])
    torch.testing.assert_close(
        twice.calibration.statistics, once.calibration.statistics, rtol=1e-6, atol=1e-7
    )


def test_calibrating_context_records_through_a_model_and_survives_the_state_dict():
    lm = PerformerLM(vocab_size=20, dim=32, depth=2, heads=2, nb_features=16, kernel="saderf")
    tokens = torch.randint(0, 20, (2, 40))
    before = lm(tokens)
    with torch.no_grad(), calibrating(lm):
        lm(tokens)
    calibrations = [m.calibration for m in lm.modules() if isinstance(m, FavorAttention)]
    assert len(calibrations) == 2 and all(c.calibrated for c in calibrations)
    after = lm(tokens)
    assert rel_rms_error(after, before) > 1e-4
    # The statistics are buffers: a fresh model loading the state_dict behaves the same.
    fresh = PerformerLM(vocab_size=20, dim=32, depth=2, heads=2, nb_features=16, kernel="saderf")
    fresh.load_state_dict(lm.state_dict())
    torch.testing.assert_close(fresh(tokens), after)


def test_gerf_starts_at_the_oprf_optimum_and_trains():
    q, k, v = qkv(1, 2, 32, 16, scale=0.7)
    gerf = FavorAttention(16, 32, kernel="gerf", seed=3)
    oprf = FavorAttention(16, 32, kernel="oprf", seed=3)
    gerf.calibrate_(q, k)
    oprf.calibrate_(q, k)
    torch.testing.assert_close(gerf(q, k, v), oprf(q, k, v))
    theta = gerf.calibration.theta
    exact = F.scaled_dot_product_attention(q, k, v)
    loss = (gerf(q, k, v) - exact).pow(2).mean()
    loss.backward()
    assert theta.grad is not None and theta.grad.abs() > 0
    a, _ = gerf.kernel_parameters()
    assert a < 1 / 8  # finite variance by construction, whatever theta is


def test_oprf_and_saderf_beat_posrf_in_the_moderate_regime():
    # The claim of Likhosherstov et al. (2022, 2023): at equal feature counts, data-chosen
    # parameters lower the attention error. Moderate regime: q and k norms of about 2 and 2.6
    # at d = 16 (unequal, as in trained models), where PosRF's error is large.
    q, k, v = qkv(1, 4, 256, 16, scale=0.5, seed=1)
    q, k = q / 1.3, k * 1.3
    exact = F.scaled_dot_product_attention(q, k, v)
    errors = {}
    for kernel in ("posrf", "oprf", "saderf"):
        errors[kernel] = (
            sum(
                rel_rms_error(FavorAttention(16, 64, kernel=kernel, seed=s)(q, k, v), exact)
                for s in range(10)
            )
            / 10
        )
    assert errors["oprf"] < 0.85 * errors["posrf"], errors
    assert errors["saderf"] < 0.7 * errors["posrf"], errors


def test_reading_the_parameters_records_nothing():
    attn = FavorAttention(16, 32, kernel="saderf")
    q, k, _ = qkv(1, 2, 10, 16)
    attn.calibrate_(q, k)
    before = attn.calibration.statistics.clone(), attn.calibration.counts.clone()
    with calibrating(attn):
        attn.kernel_parameters()
    torch.testing.assert_close(attn.calibration.statistics, before[0])
    torch.testing.assert_close(attn.calibration.counts, before[1])
