"""Random projection matrices ``W`` of shape ``(M, d)`` for random-feature attention.

Every projection is drawn once, on the host, from an integer seed, in float64 and then cast to
float32. The attention modules store the result as a buffer, so it travels in the state_dict and
becomes an initializer in an exported graph. Nothing here is ever called from ``forward``: QR and
random number generation do not export, and redrawing inside a traced graph would make the graph
non-deterministic.

:data:`PROJECTION_REGISTRY` maps each ``projection=`` name to its :class:`Projection`; the name
tuples are read off it, so a new projection is one object added to the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_choice
from .quadrature import sparse_grid_rule

ORF_NORMS = ("chi", "sqrt_d")

ProjectionDraw = Callable[[int, int, int, str], torch.Tensor]
"""``(nb_features, dim, seed, orf_norm) -> (nb_features, dim)`` rows, float64 or float32."""
WeightsDraw = Callable[[int, int, int], torch.Tensor]
"""``(nb_features, dim, seed) -> (nb_features,)`` quadrature weights summing to 1, float64."""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def gaussian_projection(nb_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """iid standard normal rows: ``(nb_features, dim)`` float64."""
    return torch.randn(nb_features, dim, generator=generator, dtype=torch.float64)


def orthogonal_projection(
    nb_features: int, dim: int, generator: torch.Generator, *, norm: str = "chi"
) -> torch.Tensor:
    """Block-orthogonal rows (ORF): ``(nb_features, dim)`` float64.

    Rows come in blocks of ``dim`` mutually orthogonal unit vectors, each block the Q factor of a
    Gaussian matrix. QR alone is not Haar distributed; multiplying each column of Q by the sign of
    the matching diagonal entry of R makes it so. Row lengths are then drawn from chi(dim), which
    gives every row the marginal law of a Gaussian vector (the estimator stays unbiased), or set to
    ``sqrt(dim)`` for a deterministic length.
    """
    if norm not in ORF_NORMS:
        raise ValueError(f"orf_norm must be one of {ORF_NORMS}, got {norm!r}")
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T)
    directions = torch.cat(blocks, dim=0)[:nb_features]
    if norm == "chi":
        lengths = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64).norm(
            dim=1
        )
    else:
        lengths = torch.full((nb_features,), math.sqrt(dim), dtype=torch.float64)
    return directions * lengths.unsqueeze(1)


def hadamard(size: int) -> torch.Tensor:
    """Normalized Sylvester-Hadamard matrix ``(size, size)`` float64; ``size`` a power of two."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / math.sqrt(size)


def structured_orthogonal_projection(
    nb_features: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """SORF rows ``sqrt(d') H D1 H D2 H D3`` (Yu et al. 2016): ``(nb_features, dim)`` float64.

    ``d'`` is ``dim`` rounded up to a power of two; queries and keys are implicitly zero-padded
    to it, which is the same as keeping the first ``dim`` columns. Each block of ``d'`` rows is
    orthogonal, and every entry has variance 1, like a Gaussian projection's.
    """
    size = 1 << (dim - 1).bit_length()
    h = hadamard(size)
    blocks = []
    for _ in range(math.ceil(nb_features / size)):
        signs = torch.randint(0, 2, (3, size), generator=generator, dtype=torch.float64) * 2 - 1
        block = h * signs[0] @ h * signs[1] @ h * signs[2]
        blocks.append(math.sqrt(size) * block[:, :dim])
    return torch.cat(blocks, dim=0)[:nb_features]


def fastfood_projection(nb_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Fastfood rows ``S H G P H B`` (Le, Sarlos and Smola 2013): ``(nb_features, dim)`` float64.

    ``B`` random signs, ``H`` the normalized Hadamard matrix, ``P`` a permutation, ``G`` a
    Gaussian diagonal. Every row of ``H G P H B`` has length ``|G| / sqrt(d')``; ``S`` rescales
    row ``i`` to a length drawn from chi(d'), so rows have a Gaussian vector's length law.
    Inputs are implicitly zero-padded to ``d'``, a power of two, as for ``sorf``.
    """
    size = 1 << (dim - 1).bit_length()
    h = hadamard(size)
    blocks = []
    for _ in range(math.ceil(nb_features / size)):
        signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.float64) * 2 - 1
        permutation = torch.randperm(size, generator=generator)
        gaussian = torch.randn(size, generator=generator, dtype=torch.float64)
        lengths = torch.randn(size, size, generator=generator, dtype=torch.float64).norm(dim=1)
        mixed = h @ torch.diag(gaussian) @ (h * signs)[permutation]
        scale = lengths * math.sqrt(size) / gaussian.norm()
        blocks.append((scale[:, None] * mixed)[:, :dim])
    return torch.cat(blocks, dim=0)[:nb_features]


class LearnableFastfood(nn.Module):
    """Fastfood with trainable diagonals (FastFoodL): ``forward() -> W (nb_features, dim)``.

    ``S``, ``G`` and ``B`` of :func:`fastfood_projection` are parameters, initialized to the
    same law; the Hadamard matrix and the permutations stay fixed. ``W`` is recomputed from them
    on every call during training; :meth:`FavorAttention.fold_projection_` turns it into one
    constant for export.
    """

    def __init__(self, nb_features: int, dim: int, seed: int) -> None:
        super().__init__()
        self.nb_features, self.dim = nb_features, dim
        self.size = 1 << (dim - 1).bit_length()
        blocks = math.ceil(nb_features / self.size)
        self.register_buffer("hadamard", hadamard(self.size).float(), persistent=False)
        self.register_buffer("permutation", torch.zeros(blocks, self.size, dtype=torch.long))
        self.signs = nn.Parameter(torch.zeros(blocks, self.size))
        self.gaussian = nn.Parameter(torch.zeros(blocks, self.size))
        self.scale = nn.Parameter(torch.zeros(blocks, self.size))
        self.reset_(seed)

    @torch.no_grad()
    def reset_(self, seed: int) -> None:
        """Draw the diagonals and permutations afresh from ``seed``."""
        generator = _generator(seed)
        for b in range(self.permutation.shape[0]):
            signs = (
                torch.randint(0, 2, (self.size,), generator=generator, dtype=torch.float64) * 2 - 1
            )
            self.permutation[b] = torch.randperm(self.size, generator=generator)
            gaussian = torch.randn(self.size, generator=generator, dtype=torch.float64)
            lengths = torch.randn(
                self.size, self.size, generator=generator, dtype=torch.float64
            ).norm(dim=1)
            self.signs[b] = signs.float()
            self.gaussian[b] = gaussian.float()
            self.scale[b] = (lengths * math.sqrt(self.size) / gaussian.norm()).float()

    def forward(self) -> torch.Tensor:
        h = self.hadamard
        # (h * signs)[permutation] per block: B, then P, as in fastfood_projection.
        signed = h.unsqueeze(0) * self.signs.unsqueeze(1)
        permuted = torch.gather(signed, 1, self.permutation.unsqueeze(-1).expand_as(signed))
        mixed = h @ (self.gaussian.unsqueeze(-1) * permuted)
        weights = (self.scale.unsqueeze(-1) * mixed)[:, :, : self.dim]
        return weights.reshape(-1, self.dim)[: self.nb_features]


def quasi_monte_carlo_projection(nb_features: int, dim: int, seed: int) -> torch.Tensor:
    """Scrambled Sobol points through the inverse normal CDF: ``(nb_features, dim)`` float64.

    Low-discrepancy points cover the Gaussian more evenly than iid draws; scrambling keeps each
    point marginally Gaussian, so the kernel estimate stays unbiased. scipy provides both pieces
    (Sobol sequences with Owen scrambling, and ``ndtri``).
    """
    from scipy.special import ndtri
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=dim, scramble=True, seed=seed)
    # Sobol sequences are balanced in blocks of 2^m points: draw the enclosing block.
    points = sampler.random_base2(max(0, (nb_features - 1).bit_length()))[:nb_features]
    eps = 1e-12  # a scrambled point is never exactly 0 or 1, but keep ndtri finite regardless
    return torch.from_numpy(ndtri(points.clip(eps, 1 - eps)))


def moment_matched_projection(
    nb_features: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian rows shifted and whitened to exact zero mean and identity covariance.

    Needs ``nb_features > dim``: fewer rows cannot have a full-rank covariance.
    """
    if nb_features <= dim:
        raise ValueError(
            f"projection 'mm' needs nb_features > dim_head to match the covariance, "
            f"got nb_features={nb_features}, dim_head={dim}"
        )
    rows = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64)
    rows = rows - rows.mean(dim=0, keepdim=True)
    covariance = rows.T @ rows / nb_features
    # rows @ L^-T has covariance L^-1 C L^-T = I for the Cholesky factor C = L L^T.
    cholesky = torch.linalg.cholesky(covariance)
    return torch.linalg.solve_triangular(cholesky, rows.T, upper=False).T


@dataclass(frozen=True)
class Projection:
    """One way of drawing the projection ``W (nb_features, dim)``.

    ``draw`` gives the rows for a seed (``orf_norm`` only matters to ORF). ``weights`` gives the
    quadrature weights of those rows for projections whose kernel estimate is a weighted sum
    rather than the Monte Carlo mean. ``module`` builds, from ``(nb_features, dim, seed)``, the
    trainable module whose ``forward()`` is ``W`` and whose ``reset_(seed)`` redraws it, for
    projections that are functions of trainable parameters rather than fixed draws.
    """

    name: str
    draw: ProjectionDraw
    weights: WeightsDraw | None = None
    module: Callable[[int, int, int], nn.Module] | None = None

    @property
    def learnable(self) -> bool:
        """Whether ``W`` is a function of trainable parameters."""
        return self.module is not None

    @property
    def weighted(self) -> bool:
        """Whether the rows come with quadrature weights, which can make estimates signed."""
        return self.weights is not None


def _from_generator(draw: Callable[[int, int, torch.Generator], torch.Tensor]) -> ProjectionDraw:
    """The draw from a CPU generator seeded with ``seed``, so every machine gets the same rows."""

    def seeded(nb_features: int, dim: int, seed: int, orf_norm: str) -> torch.Tensor:
        return draw(nb_features, dim, _generator(seed))

    return seeded


def _draw_orthogonal(nb_features: int, dim: int, seed: int, orf_norm: str) -> torch.Tensor:
    return orthogonal_projection(nb_features, dim, _generator(seed), norm=orf_norm)


def _draw_quasi_monte_carlo(nb_features: int, dim: int, seed: int, orf_norm: str) -> torch.Tensor:
    return quasi_monte_carlo_projection(nb_features, dim, int(seed))


def _draw_learnable_fastfood(nb_features: int, dim: int, seed: int, orf_norm: str) -> torch.Tensor:
    """The module's initial ``W``, computed without recording the graph to its parameters."""
    with torch.no_grad():
        return LearnableFastfood(nb_features, dim, int(seed))()


def _sparse_grid_nodes(nb_features: int, dim: int, seed: int, orf_norm: str) -> torch.Tensor:
    return sparse_grid_rule(nb_features, dim, _generator(seed))[0]


def _sparse_grid_weights(nb_features: int, dim: int, seed: int) -> torch.Tensor:
    return sparse_grid_rule(nb_features, dim, _generator(seed))[1]


PROJECTION_REGISTRY: dict[str, Projection] = {
    projection.name: projection
    for projection in (
        Projection("gaussian", _from_generator(gaussian_projection)),
        Projection("orf", _draw_orthogonal),
        Projection("sorf", _from_generator(structured_orthogonal_projection)),
        Projection("qmc", _draw_quasi_monte_carlo),
        Projection("mm", _from_generator(moment_matched_projection)),
        Projection("sgq", _sparse_grid_nodes, weights=_sparse_grid_weights),
        Projection("fastfood", _from_generator(fastfood_projection)),
        Projection("fastfoodl", _draw_learnable_fastfood, module=LearnableFastfood),
    )
}

PROJECTIONS = tuple(PROJECTION_REGISTRY)
LEARNABLE_PROJECTIONS = tuple(name for name, p in PROJECTION_REGISTRY.items() if p.learnable)
WEIGHTED_PROJECTIONS = tuple(name for name, p in PROJECTION_REGISTRY.items() if p.weighted)


def get_projection(name: str) -> Projection:
    """The projection registered as ``name``; ValueError naming the registered ones otherwise."""
    return PROJECTION_REGISTRY[check_choice("projection", name, tuple(PROJECTION_REGISTRY))]


def draw_projection(
    kind: str, nb_features: int, dim: int, *, seed: int, orf_norm: str = "chi"
) -> torch.Tensor:
    """Draw the projection called ``kind`` from ``seed``: ``(nb_features, dim)`` float32.

    The same arguments give the same matrix on every machine, since the draw runs on the CPU
    generator in float64.
    """
    return get_projection(kind).draw(nb_features, dim, seed, orf_norm).to(torch.float32)


def draw_feature_weights(
    kind: str, nb_features: int, dim: int, *, seed: int
) -> torch.Tensor | None:
    """Quadrature weights times ``nb_features`` ``(nb_features,)`` float32, or None for Monte Carlo.

    They belong to the rows :func:`draw_projection` returns for the same arguments: the kernel
    estimate is ``sum_i c_i f(x, w_i) f(y, w_i)`` instead of the mean over ``i``, so scaling by
    ``nb_features`` makes plain Monte Carlo the all-ones case. Sparse-grid weights can be
    negative.
    """
    weights = get_projection(kind).weights
    if weights is None:
        return None
    return (weights(nb_features, dim, seed) * nb_features).to(torch.float32)
