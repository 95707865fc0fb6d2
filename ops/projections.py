"""Random projection matrices ``W`` of shape ``(M, d)`` for random-feature attention.

Every projection is drawn once, on the host, from an integer seed, in float64 and then cast to
float32. The attention modules store the result as a buffer, so it travels in the state_dict and
becomes an initializer in an exported graph. Nothing here is ever called from ``forward``: QR and
random number generation do not export, and redrawing inside a traced graph would make the graph
non-deterministic.
"""

from __future__ import annotations

import math

import torch

PROJECTIONS = ("gaussian", "orf")
ORF_NORMS = ("chi", "sqrt_d")


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


def draw_projection(
    kind: str, nb_features: int, dim: int, *, seed: int, orf_norm: str = "chi"
) -> torch.Tensor:
    """Draw the projection called ``kind`` from ``seed``: ``(nb_features, dim)`` float32.

    The same arguments give the same matrix on every machine, since the draw runs on the CPU
    generator in float64.
    """
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if kind == "gaussian":
        weights = gaussian_projection(nb_features, dim, generator)
    else:
        weights = orthogonal_projection(nb_features, dim, generator, norm=orf_norm)
    return weights.to(torch.float32)
