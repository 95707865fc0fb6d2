import dataclasses
import itertools
import math
import re

import pytest
import torch

from favor.ops import FavorAttention
from favor.ops.projections import (
    LEARNABLE_PROJECTIONS,
    PROJECTION_REGISTRY,
    PROJECTIONS,
    WEIGHTED_PROJECTIONS,
    draw_feature_weights,
    draw_projection,
    get_projection,
)


@pytest.mark.parametrize("kind", PROJECTION_REGISTRY)
def test_same_seed_same_matrix_other_seed_other_matrix(kind):
    a = draw_projection(kind, 48, 16, seed=3)
    assert a.shape == (48, 16) and a.dtype == torch.float32
    assert torch.equal(a, draw_projection(kind, 48, 16, seed=3))
    assert not torch.allclose(a, draw_projection(kind, 48, 16, seed=4))


@pytest.mark.parametrize("norm", ["chi", "sqrt_d"])
def test_orf_rows_are_orthogonal_within_each_block(norm):
    dim, blocks = 16, 3
    w = draw_projection("orf", dim * blocks + 5, dim, seed=0, orf_norm=norm).double()
    for b in range(blocks):
        block = w[b * dim : (b + 1) * dim]
        gram = block @ block.T
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 1e-4 * gram.diagonal().max()
    if norm == "sqrt_d":
        torch.testing.assert_close(
            w.norm(dim=1), torch.full((w.shape[0],), math.sqrt(dim)).double()
        )


def test_moment_matching_is_exact():
    w = draw_projection("mm", 100, 16, seed=2).double()
    torch.testing.assert_close(w.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.T @ w / 100, torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="'mm' needs nb_features > dim_head"):
        draw_projection("mm", 16, 16, seed=0)


@pytest.mark.parametrize("dim", [16, 12], ids=["power-of-two", "padded"])
def test_sorf_blocks_are_orthogonal_in_the_padded_space(dim):
    w = draw_projection("sorf", 40, dim, seed=0).double()
    assert w.shape == (40, dim)
    if dim == 16:  # no padding: each block of 16 rows is exactly orthogonal with norm sqrt(16)
        for b in range(2):
            block = w[16 * b : 16 * (b + 1)]
            torch.testing.assert_close(
                block @ block.T, 16 * torch.eye(16, dtype=torch.float64), atol=1e-4, rtol=0
            )


def test_fastfood_rows_have_chi_lengths_and_gaussian_kernel():
    # Without padding (d = 16), row i's length is exactly its drawn chi(16) length.
    w = draw_projection("fastfood", 16 * 64, 16, seed=3).double()
    squared = w.norm(dim=1).pow(2)
    # chi^2(16) has mean 16 and variance 32; 1024 independent rows give a standard error of 0.18.
    assert abs(squared.mean().item() - 16) < 5 * (32 / squared.numel()) ** 0.5
    # E[cos(w . u)] = exp(-|u|^2 / 2) for Gaussian-like rows: the random Fourier feature identity.
    u = torch.full((16,), 0.15, dtype=torch.float64)
    torch.testing.assert_close(
        torch.cos(w @ u).mean(), torch.exp(-u.pow(2).sum() / 2), atol=0.03, rtol=0
    )


def test_qmc_points_are_more_even_than_iid():
    # Low discrepancy: the empirical CDF of the uniforms behind each coordinate is closer to the
    # diagonal than for iid draws (Kolmogorov-Smirnov distance, averaged over coordinates).
    from scipy.special import ndtr

    def ks(w):
        u, _ = torch.sort(torch.from_numpy(ndtr(w.double().numpy())), dim=0)
        grid = (torch.arange(u.shape[0], dtype=torch.float64) + 0.5) / u.shape[0]
        return (u - grid[:, None]).abs().max(0).values.mean().item()

    assert ks(draw_projection("qmc", 256, 8, seed=0)) < 0.5 * ks(
        draw_projection("gaussian", 256, 8, seed=0)
    )


@pytest.mark.parametrize("kind", PROJECTION_REGISTRY)
def test_rows_have_gaussian_moments(kind):
    # 16 384 entries: the mean has standard error 1/128 and the variance about sqrt(2)/128, so
    # a 5-sigma band is +-0.04 and +-0.055. A wrong scale (e.g. unit rows) misses by far more.
    # Quadrature projections are Gaussian in their weighted moments, Monte Carlo ones plainly.
    w = draw_projection(kind, 1024, 16, seed=1).double()
    weights = draw_feature_weights(kind, 1024, 16, seed=1)
    p = torch.full((1024, 1), 1 / 1024.0) if weights is None else weights.double()[:, None] / 1024
    assert abs((p * w).sum(0).mean().item()) < 0.04
    assert abs((p * w * w).sum(0).mean().item() - 1.0) < 0.055


def test_orf_directions_are_sign_fixed_haar():
    # Without the sign fix, QR of a Gaussian matrix gives R a positive diagonal only by LAPACK's
    # convention, which biases each row towards the corresponding axis; with it the first
    # coordinate of unit rows has mean 0. 200 blocks x 8 rows: standard error ~ 0.0125.
    w = draw_projection("orf", 8 * 200, 8, seed=0, orf_norm="sqrt_d").double()
    diag_coords = torch.stack([w[i * 8 : (i + 1) * 8].diagonal() for i in range(200)]) / math.sqrt(
        8
    )
    assert abs(diag_coords.mean().item()) < 0.07


def test_unknown_projection_and_norm_are_rejected():
    with pytest.raises(ValueError, match="projection must be one of"):
        draw_projection("sobol", 8, 4, seed=0)
    with pytest.raises(ValueError, match="orf_norm"):
        draw_projection("orf", 8, 4, seed=0, orf_norm="unit")


def test_fastfoodl_trains_its_diagonals_and_folds_to_the_same_outputs():
    torch.manual_seed(0)
    attn = FavorAttention(16, 40, projection="fastfoodl", causal=True, chunk_size=8)
    q, k, v = (torch.randn(2, 2, 20, 16) * 0.5 for _ in range(3))
    before = attn.learnable_projection.gaussian.detach().clone()
    optimizer = torch.optim.SGD(attn.parameters(), lr=0.1)
    attn(q, k, v).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(before, attn.learnable_projection.gaussian)
    trained = attn(q, k, v)
    attn.fold_projection_()
    assert attn.learnable_projection is None and not list(attn.parameters())
    torch.testing.assert_close(attn(q, k, v), trained)


def test_every_projection_is_its_own_object_registered_under_its_name():
    for name, projection in PROJECTION_REGISTRY.items():
        assert projection.name == name
    assert len({id(p) for p in PROJECTION_REGISTRY.values()}) == len(PROJECTION_REGISTRY)


NAME_TUPLES = {
    "PROJECTIONS": (
        PROJECTIONS,
        ("gaussian", "orf", "sorf", "qmc", "mm", "sgq", "fastfood", "fastfoodl"),
    ),
    "LEARNABLE_PROJECTIONS": (LEARNABLE_PROJECTIONS, ("fastfoodl",)),
    "WEIGHTED_PROJECTIONS": (WEIGHTED_PROJECTIONS, ("sgq",)),
}


@pytest.mark.parametrize(("derived", "expected"), NAME_TUPLES.values(), ids=NAME_TUPLES.keys())
def test_name_tuples_read_off_the_registry_keep_their_members(derived, expected):
    assert derived == expected


def test_no_projection_falls_back_on_another_ones_draw():
    drawn = {name: draw_projection(name, 48, 16, seed=3) for name in PROJECTION_REGISTRY}
    for (name, w), (other, w_other) in itertools.combinations(drawn.items(), 2):
        assert not torch.allclose(w, w_other), (name, other)


UNKNOWN_PROJECTION_CALLS = {
    "get_projection": lambda: get_projection("sobol"),
    "draw_projection": lambda: draw_projection("sobol", 8, 4, seed=0),
    "draw_feature_weights": lambda: draw_feature_weights("sobol", 8, 4, seed=0),
}


@pytest.mark.parametrize("call", UNKNOWN_PROJECTION_CALLS.values(), ids=UNKNOWN_PROJECTION_CALLS)
def test_unknown_projection_is_a_value_error_naming_the_registered_ones(call):
    choices = ", ".join(repr(name) for name in PROJECTION_REGISTRY)
    with pytest.raises(ValueError, match=re.escape(f"projection must be one of {choices}; got")):
        call()


@pytest.mark.parametrize("kind", PROJECTION_REGISTRY)
def test_attention_takes_weights_and_trainable_module_from_the_registry(kind):
    projection = PROJECTION_REGISTRY[kind]
    weights = draw_feature_weights(kind, 48, 16, seed=3)
    assert (weights is not None) == projection.weighted
    attn = FavorAttention(16, 48, projection=kind, seed=3)
    assert (attn.feature_weights is not None) == projection.weighted
    assert (attn.learnable_projection is not None) == projection.learnable
    assert torch.equal(attn.projection_weights(), draw_projection(kind, 48, 16, seed=3))


def test_a_projection_added_to_the_registry_is_usable_by_attention(monkeypatch):
    again = dataclasses.replace(PROJECTION_REGISTRY["sgq"], name="sgq-again")
    monkeypatch.setitem(PROJECTION_REGISTRY, again.name, again)
    added = FavorAttention(16, 33, projection="sgq-again", seed=5)
    original = FavorAttention(16, 33, projection="sgq", seed=5)
    assert torch.equal(added.projection_matrix, original.projection_matrix)
    assert torch.equal(added.feature_weights, original.feature_weights)
    assert added.denominator_floor() == original.denominator_floor()
