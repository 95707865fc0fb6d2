"""Sparse-grid Gaussian quadrature for the standard normal measure ``N(0, I_d)``.

A quadrature rule is a set of nodes ``w_i`` (rows of an ``(M, d)`` matrix) and weights ``c_i``
with ``sum_i c_i g(w_i) ~ E_{w ~ N(0, I_d)}[g(w)]``. Used as a projection, the kernel estimate
becomes ``sum_i c_i f(x, w_i) f(y, w_i)``; Smolyak weights can be negative.

The 1-D building blocks are Gauss-Hermite rules with an odd number of points. They are not
nested, but they all contain 0, which is what makes the Smolyak grid sparse: a coordinate whose
1-D rule is the level-1 rule sits at 0 with weight 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from itertools import combinations, pairwise, product

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss

# Merged Smolyak weights at or below this size are cancellations, not nodes.
ZERO_WEIGHT = 1e-14
# Level 5 in 64 dimensions has millions of nodes; no realistic feature count reaches it.
MAX_LEVEL = 4


def gauss_hermite_1d(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite rule for ``N(0, 1)`` with ``2 * level - 1`` points.

    Returns nodes ``(2 * level - 1,)`` in increasing order and weights of the same shape summing
    to 1; the rule is exact for polynomials of degree ``<= 4 * level - 3``. numpy symmetrizes the
    rule, so the middle node is exactly 0.0, which :func:`smolyak_rule` relies on to merge nodes.
    """
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    nodes, weights = hermegauss(2 * level - 1)
    return nodes, weights / weights.sum()


def _combination_coefficient(dim: int, level: int, excess: int) -> int:
    """Smolyak coefficient ``(-1)^(q - |i|) C(d - 1, q - |i|)`` for ``|i| = dim + excess``.

    With ``q = dim + level - 1``, ``q - |i| = level - 1 - excess``. The lower bound
    ``|i| >= q - d + 1`` needs no test: ``math.comb`` is 0 there.
    """
    gap = level - 1 - excess
    return (-1) ** gap * math.comb(dim - 1, gap)


def _sparse_multi_indices(
    dim: int, excess: int
) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Multi-indices ``i`` with ``|i| = dim + excess``, as ``(coords, excesses)``.

    ``coords`` are the coordinates where ``i_j > 1`` and ``excesses`` the values ``i_j - 1``
    there; every other coordinate is 1.
    """
    if excess == 0:
        yield (), ()
        return
    for parts in range(1, min(excess, dim) + 1):
        for coords in combinations(range(dim), parts):
            # Cutting 0..excess at parts - 1 interior points gives each composition once.
            for cuts in combinations(range(1, excess), parts - 1):
                bounds = (0, *cuts, excess)
                yield coords, tuple(b - a for a, b in pairwise(bounds))


def _partitions(total: int, largest: int) -> Iterator[tuple[int, ...]]:
    """Non-increasing tuples of positive integers ``<= largest`` summing to ``total``."""
    if total == 0:
        yield ()
        return
    for first in range(min(total, largest), 0, -1):
        for rest in _partitions(total - first, first):
            yield (first, *rest)


def smolyak_rule(dim: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smolyak combination of :func:`gauss_hermite_1d` rules: nodes ``(n, dim)``, weights ``(n,)``.

    Both float64. ``A(q, d) = sum_{q-d+1 <= |i| <= q} (-1)^(q-|i|) C(d-1, q-|i|) U^{i_1} x ...
    x U^{i_d}`` with ``q = dim + level - 1``; exact for polynomials of total degree
    ``<= 2 * level - 1``. A multi-index is stored by its excess ``i_j - 1`` on the few coordinates
    where it is positive, so the cost does not grow with ``dim``-tuples. A node shared by several
    tensor products gets the sum of their weights; nodes whose sum cancels to 0 are dropped.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    # rules[e] is the 1-D rule at level e + 1, as (node, weight) pairs of Python floats.
    rules = []
    for e in range(level):
        points_1d, weights_1d = gauss_hermite_1d(e + 1)
        rules.append(list(zip(points_1d.tolist(), weights_1d.tolist(), strict=True)))
    # A node is keyed by its nonzero coordinates, so equal nodes meet whatever product made them.
    merged: dict[tuple[tuple[int, float], ...], float] = {}
    for excess in range(level):
        coefficient = _combination_coefficient(dim, level, excess)
        if coefficient == 0:
            continue
        for coords, excesses in _sparse_multi_indices(dim, excess):
            for points in product(*(rules[e] for e in excesses)):
                key = tuple((j, x) for j, (x, _) in zip(coords, points, strict=True) if x)
                weight = coefficient * math.prod(w for _, w in points)
                merged[key] = merged.get(key, 0.0) + weight
    kept = [(key, weight) for key, weight in merged.items() if abs(weight) > ZERO_WEIGHT]
    nodes = np.zeros((len(kept), dim))
    for row, (key, _) in enumerate(kept):
        for j, x in key:
            nodes[row, j] = x
    weights = np.array([weight for _, weight in kept])
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def smolyak_size(dim: int, level: int) -> int:
    """Number of nodes :func:`smolyak_rule` returns, counted without building the grid.

    Nodes are counted by type: the multiset of 1-D levels of their nonzero coordinates (each
    nonzero 1-D node belongs to exactly one level, so its coordinate's excess is fixed). The
    remaining ``n_free`` coordinates are 0 in every 1-D rule, so the merged weight of a node is
    ``prod_j w_j * Z``, where ``Z`` sums the combination coefficients times the zero-weights of all
    ways of spreading the leftover excess over the free coordinates: the truncated series of
    ``P(x)^n_free``, ``P(x) = sum_e w_{e+1}(0) x^e``.
    """
    rules = [gauss_hermite_1d(e + 1) for e in range(level)]
    zero_weights = np.array([weights[e] for e, (_, weights) in enumerate(rules)])
    nonzero_weights = [np.delete(weights, e) for e, (_, weights) in enumerate(rules)]
    count = 0
    for excess in range(level):
        for parts in _partitions(excess, excess):
            n_free = dim - len(parts)
            if n_free < 0:
                continue
            series = np.zeros(level)
            series[0] = 1.0
            for _ in range(n_free):
                series = np.convolve(series, zero_weights)[:level]
            z = sum(
                _combination_coefficient(dim, level, excess + extra) * series[extra]
                for extra in range(level - excess)
            )
            products = functools.reduce(np.multiply.outer, (nonzero_weights[e] for e in parts), 1.0)
            placements = math.perm(dim, len(parts))
            for repeats in map(parts.count, set(parts)):
                placements //= math.factorial(repeats)
            count += placements * int(np.count_nonzero(np.abs(products * z) > ZERO_WEIGHT))
    return count


def _haar_orthogonal(dim: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal ``(dim, dim)`` float64 matrix.

    QR alone is biased; scaling each column of Q by the sign of R's diagonal makes it Haar.
    """
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _fitting_grid(nb_features: int, dim: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """The grid :func:`sparse_grid_rule` repeats: ``(grid_dim, nodes (n, grid_dim), weights (n,))``.

    The highest level from 2 to ``MAX_LEVEL`` whose grid has at most ``nb_features`` nodes; if
    not even level 2 fits, level 2 in the largest subspace where it does; ``None`` below 3
    features, where no grid fits.
    """
    fitting = [
        level for level in range(2, MAX_LEVEL + 1) if smolyak_size(dim, level) <= nb_features
    ]
    if fitting:
        return dim, *smolyak_rule(dim, fitting[-1])
    if nb_features < 3:
        return None
    # Level 2 in k dimensions has at most 2k + 1 nodes.
    grid_dim = (nb_features - 1) // 2
    return grid_dim, *smolyak_rule(grid_dim, 2)


def sparse_grid_rule(
    nb_features: int, dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized sparse-grid rule: nodes ``W (nb_features, dim)``, weights ``(nb_features,)``.

    Both float64; the weights sum to 1. ``nb_features // n`` copies of the ``n``-node grid of
    :func:`_fitting_grid` come first, each turned by its own Haar rotation (the measure is
    rotation invariant, so every copy stays exact for the same polynomials); a subspace grid's
    nodes share one iid N(0, 1) draw for the other coordinates before the rotation, so each copy
    averages correctly over those directions. The remaining features are iid Gaussian Monte Carlo nodes.
    Each copy weighs ``n / nb_features`` in total and each Monte Carlo node ``1 / nb_features``:
    a convex combination of rules for ``N(0, I_dim)``. Grid copies are exact for low-degree
    polynomials but biased for other integrands (``exp(w . u)`` comes out low for large ``|u|``);
    the Monte Carlo nodes are unbiased. All randomness comes from ``generator``.
    """
    if nb_features < 1 or dim < 1:
        raise ValueError(f"nb_features and dim must be >= 1, got {nb_features} and {dim}")
    blocks: list[torch.Tensor] = []
    block_weights: list[torch.Tensor] = []
    grid = _fitting_grid(nb_features, dim)
    if grid is not None:
        grid_dim, nodes, weights = grid
        for _ in range(nb_features // len(nodes)):
            rotation = _haar_orthogonal(dim, generator)
            # One completion shared by the copy's nodes: the grid's large weights of both signs
            # then cancel as designed. Fresh draws per node would multiply the Monte Carlo noise
            # by sum c_i^2 (about 400 at k = 63), far worse than plain Monte Carlo.
            completion = torch.randn(1, dim - grid_dim, generator=generator, dtype=torch.float64)
            completed = torch.cat([nodes, completion.expand(len(nodes), -1)], dim=1)
            blocks.append(completed @ rotation.T)
            block_weights.append(weights * len(nodes) / nb_features)
    remainder = nb_features - sum(len(block) for block in blocks)
    blocks.append(torch.randn(remainder, dim, generator=generator, dtype=torch.float64))
    block_weights.append(torch.full((remainder,), 1 / nb_features, dtype=torch.float64))
    return torch.cat(blocks), torch.cat(block_weights)
