import itertools
import math

import pytest
import torch

from favor.ops.quadrature import gauss_hermite_1d, smolyak_rule, smolyak_size, sparse_grid_rule


def normal_moment(power: int) -> float:
    """``E[x^power]`` for ``x ~ N(0, 1)``: ``(power - 1)!!`` for even powers, 0 for odd ones."""
    return 0.0 if power % 2 else float(math.prod(range(power - 1, 0, -2)))


def monomial_exponents(dim: int, max_degree: int) -> list[tuple[int, ...]]:
    return [
        powers
        for powers in itertools.product(range(max_degree + 1), repeat=dim)
        if sum(powers) <= max_degree
    ]


def rule_moment(nodes: torch.Tensor, weights: torch.Tensor, powers: tuple[int, ...]) -> float:
    monomial = torch.prod(nodes ** torch.tensor(powers, dtype=torch.float64), dim=1)
    return float(weights @ monomial)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("level", [1, 2, 3, 4], ids=lambda level: f"level{level}")
def test_1d_rule_is_exact_to_degree_4l_minus_3(level):
    nodes, weights = gauss_hermite_1d(level)
    assert nodes.shape == weights.shape == (2 * level - 1,)
    assert nodes[level - 1] == 0.0  # smolyak_rule merges nodes on an exact 0
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    for power in range(4 * level - 2):
        # Odd moments cancel between terms of size up to 1e4; allow rounding relative to them.
        scale = weights @ abs(nodes) ** power
        assert weights @ nodes**power == pytest.approx(normal_moment(power), abs=1e-14 * scale)
    # Odd moments vanish by symmetry, so the first failure of a 2l-1 point rule is 4l - 2.
    first_inexact = 4 * level - 2
    assert weights @ nodes**first_inexact < 0.99 * normal_moment(first_inexact)


@pytest.mark.parametrize(
    ("dim", "level"),
    [(1, 3), (3, 2), (3, 3), (4, 4), (16, 3), (64, 2)],
    ids=lambda value: str(value),
)
def test_smolyak_weights_sum_to_one(dim, level):
    nodes, weights = smolyak_rule(dim, level)
    assert nodes.dtype == weights.dtype == torch.float64
    assert nodes.shape == (len(weights), dim)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("dim", "level"), [(3, 2), (3, 3), (2, 4)], ids=["d3-l2", "d3-l3", "d2-l4"]
)
def test_smolyak_is_exact_to_total_degree_2l_minus_1(dim, level):
    nodes, weights = smolyak_rule(dim, level)
    for powers in monomial_exponents(dim, 2 * level - 1):
        expected = math.prod(normal_moment(p) for p in powers)
        assert rule_moment(nodes, weights, powers) == pytest.approx(expected, abs=1e-11), powers


@pytest.mark.parametrize("level", [2, 3], ids=lambda level: f"level{level}")
def test_smolyak_misses_a_degree_2l_monomial(level):
    # No node has `level` nonzero coordinates, so x_1^2 ... x_l^2 (expectation 1) gets 0.
    nodes, weights = smolyak_rule(level + 1, level)
    assert rule_moment(nodes, weights, (2,) * level + (0,)) == pytest.approx(0.0, abs=1e-12)


def test_level_2_closed_form():
    # Origin with weight 1 - d/3, and +-sqrt(3) e_j with weight 1/6 for every axis j.
    dim = 5
    nodes, weights = smolyak_rule(dim, 2)
    assert nodes.shape == (2 * dim + 1, dim)
    origin = (nodes == 0).all(dim=1)
    assert int(origin.sum()) == 1
    assert float(weights[origin]) == pytest.approx(1 - dim / 3, abs=1e-14)
    axis_nodes, axis_weights = nodes[~origin], weights[~origin]
    assert bool(((axis_nodes != 0).sum(dim=1) == 1).all())
    values = axis_nodes.sum(dim=1)
    torch.testing.assert_close(values.abs(), torch.full_like(values, math.sqrt(3)))
    axes = (axis_nodes != 0).int().argmax(dim=1)
    assert {(int(j), bool(v > 0)) for j, v in zip(axes, values, strict=True)} == {
        (j, positive) for j in range(dim) for positive in (False, True)
    }
    torch.testing.assert_close(axis_weights, torch.full_like(axis_weights, 1 / 6))


@pytest.mark.parametrize(
    ("dim", "level"),
    [(dim, level) for level in (1, 2, 3, 4) for dim in (1, 2, 3, 4, 6)] + [(16, 3), (64, 2)],
    ids=lambda value: str(value),
)
def test_smolyak_size_counts_merged_nodes(dim, level):
    # (3, 2) drops the origin (weight 1 - 3/3); (1, 3) and (1, 4) drop lower-level nodes.
    assert smolyak_size(dim, level) == len(smolyak_rule(dim, level)[0])


def test_smolyak_size_known_counts():
    # Level 2: origin and 2 per axis. Level 3: origin, 6 per axis, 4 per pair of axes.
    assert [smolyak_size(d, 2) for d in (3, 16, 64)] == [6, 33, 129]
    assert [smolyak_size(d, 3) for d in (16, 64)] == [
        1 + 6 * 16 + 2 * 16 * 15,
        1 + 6 * 64 + 2 * 64 * 63,
    ]


SHAPES = [(16, 8), (128, 64), (129, 64), (256, 64), (64, 16), (7, 16), (2, 4)]


@pytest.mark.parametrize(("nb_features", "dim"), SHAPES, ids=lambda value: str(value))
def test_rule_shapes_and_weight_sum(nb_features, dim):
    nodes, weights = sparse_grid_rule(nb_features, dim, generator(0))
    assert nodes.shape == (nb_features, dim) and weights.shape == (nb_features,)
    assert nodes.dtype == weights.dtype == torch.float64
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("nb_features", "dim"), SHAPES, ids=lambda value: str(value))
def test_same_seed_same_rule_other_seed_other_rule(nb_features, dim):
    nodes, weights = sparse_grid_rule(nb_features, dim, generator(3))
    same_nodes, same_weights = sparse_grid_rule(nb_features, dim, generator(3))
    assert torch.equal(nodes, same_nodes) and torch.equal(weights, same_weights)
    assert not torch.allclose(nodes, sparse_grid_rule(nb_features, dim, generator(4))[0])


@pytest.mark.parametrize(
    ("nb_features", "dim", "grid_rows"),
    [(33, 16, 33), (129, 64, 129), (64, 16, 33), (256, 32, 3 * 65), (600, 16, 577)],
    ids=["l2-exact", "l2-d64-exact", "l2+mc", "l2x3+mc", "l3+mc"],
)
def test_grid_part_matches_first_and_second_moments(nb_features, dim, grid_rows):
    nodes, weights = sparse_grid_rule(nb_features, dim, generator(1))
    grid_nodes, grid_weights = nodes[:grid_rows], weights[:grid_rows]
    share = grid_rows / nb_features
    assert float(grid_weights.sum()) == pytest.approx(share, abs=1e-12)
    torch.testing.assert_close(
        grid_weights @ grid_nodes, torch.zeros(dim, dtype=torch.float64), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(
        (grid_nodes.T * grid_weights) @ grid_nodes,
        share * torch.eye(dim, dtype=torch.float64),
        rtol=0,
        atol=1e-10,
    )
    torch.testing.assert_close(
        weights[grid_rows:],
        torch.full((nb_features - grid_rows,), 1 / nb_features, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("nb_features", "tolerance"), [(33, 2e-3), (64, 0.05)], ids=["pure-grid", "grid+mc"]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_gaussian_moment_generating_function(nb_features, tolerance, seed):
    dim = 16
    direction = torch.randn(dim, generator=generator(100 + seed), dtype=torch.float64)
    u = 0.3 * direction / direction.norm()
    nodes, weights = sparse_grid_rule(nb_features, dim, generator(seed))
    estimate = float(weights @ torch.exp(nodes @ u))
    assert estimate == pytest.approx(math.exp(float(u @ u) / 2), rel=tolerance)


@pytest.mark.parametrize(
    ("nb_features", "dim", "grid_rows"), [(16, 8, 15), (128, 64, 127)], ids=["d8", "d64"]
)
def test_subspace_grid_is_completed_in_the_missing_directions(nb_features, dim, grid_rows):
    # Level 2 in dim - 1 coordinates; without the shared Gaussian completion every node of the
    # copy would lie in one (dim - 1)-dimensional subspace.
    nodes, _ = sparse_grid_rule(nb_features, dim, generator(2))
    assert int(torch.linalg.matrix_rank(nodes[:grid_rows])) == dim


def test_subspace_grid_is_about_as_precise_as_monte_carlo():
    # When level 2 does not fit (M < 2d + 1), the grid's completion is shared per copy. Drawn per
    # node instead, the noise grows by sum c_i^2: a standard deviation 20x that of plain Monte
    # Carlo here. Shared, it stays within 2x.
    dim, nb_features = 64, 128
    u = torch.full((dim,), 0.3 / math.sqrt(dim), dtype=torch.float64)
    truth = math.exp(float(u @ u) / 2)

    def spread(draw):
        errors = torch.tensor([draw(seed) / truth - 1 for seed in range(200)])
        return float(errors.std())

    def grid(seed):
        nodes, weights = sparse_grid_rule(nb_features, dim, generator(seed))
        return float(weights @ torch.exp(nodes @ u))

    def monte_carlo(seed):
        nodes = torch.randn(nb_features, dim, generator=generator(seed), dtype=torch.float64)
        return float(torch.exp(nodes @ u).mean())

    assert spread(grid) < 2 * spread(monte_carlo)
