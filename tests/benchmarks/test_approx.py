"""The approximation variants and their report, on hand-made inputs and synthetic cells."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.approx import parse_args
from benchmarks.approx_inputs import REGIMES, Inputs
from benchmarks.approx_report import best_variants, ratio_summary, render_markdown_table
from benchmarks.approx_variants import (
    LARA,
    UNIFORM,
    VARIANTS,
    UniformAttention,
    measure_cell,
    rel_rms_error,
)
from favor.ops import KERNELS, PROJECTIONS


def test_every_kernel_and_projection_is_a_variant_with_lara_and_the_baseline():
    pairs = {f"{k}/{p}" for k in KERNELS for p in PROJECTIONS}
    assert set(VARIANTS) == pairs | {LARA, UNIFORM}
    assert len({variant.label for variant in VARIANTS.values()}) == len(VARIANTS)
    unranked = {name for name, variant in VARIANTS.items() if not variant.ranked}
    assert unranked == {f"relu/{p}" for p in PROJECTIONS} | {UNIFORM}


def test_uniform_attention_is_the_mean_of_the_values():
    v = torch.tensor([1.0, 3.0, 5.0]).reshape(1, 1, 3, 1)
    q = k = torch.zeros(1, 1, 3, 2)
    assert UniformAttention(causal=False)(q, k, v).flatten().tolist() == [3.0, 3.0, 3.0]
    assert UniformAttention(causal=True)(q, k, v).flatten().tolist() == [1.0, 2.0, 3.0]


def test_relative_rms_error():
    # Difference (-1, 1): RMS 1; expected (2, 0): RMS sqrt 2.
    error = rel_rms_error(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]))
    assert error == pytest.approx(1 / math.sqrt(2))


@pytest.fixture
def small() -> tuple[Inputs, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=generator) * 0.3 for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    return Inputs(q, k, v), exact


def test_a_cell_has_one_error_per_seed_and_the_baseline_one(small):
    inputs, exact = small
    regime = REGIMES["small"]
    cell = measure_cell(VARIANTS["posrf/orf"], regime, inputs, exact, features=32, seeds=3)
    assert cell["status"] == "ok" and len(cell["errors"]) == 3 and cell["feature_dim"] == 32
    assert (cell["kernel"], cell["projection"]) == ("posrf", "orf")
    uniform = measure_cell(VARIANTS[UNIFORM], regime, inputs, exact, features=32, seeds=3)
    expected = rel_rms_error(inputs.v.mean(-2, keepdim=True).expand_as(inputs.v), exact)
    assert uniform["errors"] == [pytest.approx(expected)]


def test_a_variant_that_does_not_exist_there_is_not_a_failure(small):
    inputs, exact = small
    # The moment-matching projection needs more features than the head size (8).
    cell = measure_cell(VARIANTS["posrf/mm"], REGIMES["small"], inputs, exact, features=4, seeds=2)
    assert cell["status"] == "n/a" and "errors" not in cell


def cell(variant: str, mean: float, regime: str = "small", m: int = 16) -> dict:
    return {
        "variant": variant, "regime": regime, "nb_features": m, "status": "ok",
        "errors": [mean], "nonfinite": 0, "mean": mean, "std": 0.0,
    }  # fmt: skip


CELLS = [
    cell("posrf/gaussian", 0.4),
    cell("posrf/orf", 0.2),
    cell("oprf/gaussian", 0.5),
    cell("oprf/orf", 0.4),
    cell(f"relu/{PROJECTIONS[0]}", 0.01),
    cell(UNIFORM, 0.001),
]


def test_the_best_variant_is_the_lowest_ranked_mean():
    # relu and uniform are lower, but estimate no softmax.
    assert best_variants(CELLS, ["small"], [16])["small", 16]["variant"] == "posrf/orf"


def test_ratio_summaries_are_medians_of_ratios_to_the_baseline():
    by_projection = ratio_summary(CELLS, ["small"], [16], "projection", "gaussian")
    # orf / gaussian: posrf 0.2 / 0.4 = 0.5, oprf 0.4 / 0.5 = 0.8; median 0.65.
    assert by_projection["orf", "small", 16] == pytest.approx(0.65)
    by_kernel = ratio_summary(CELLS, ["small"], [16], "kernel", "posrf")
    # oprf / posrf: gaussian 0.5 / 0.4 = 1.25, orf 0.4 / 0.2 = 2; median 1.625.
    assert by_kernel["oprf", "small", 16] == pytest.approx(1.625)


def test_the_markdown_table_has_a_column_per_regime_and_m_and_marks_the_best():
    cells = [*CELLS, cell("posrf/orf", 0.3, regime="moderate")]
    best = best_variants(cells, ["small", "moderate"], [16])
    text = render_markdown_table(cells, ["posrf/orf", UNIFORM], ["small", "moderate"], [16], best)
    header, rule, orf, uniform, winners = text.splitlines()
    assert header == "| variant | small M=16 | moderate M=16 |"
    assert rule == "|---|---:|---:|"
    assert orf == "| posrf/orf | **0.2 ± 0** | **0.3 ± 0** |"
    assert uniform.startswith("| uniform (mean of v) † | 0.001 ± 0 |")
    assert winners == "| best of all variants | posrf/orf | posrf/orf |"


def test_quick_runs_fewer_seeds_and_features():
    quick, full = parse_args(["--quick"]), parse_args([])
    assert (quick.seeds, quick.features) == (2, (16, 64))
    assert (full.seeds, full.features) == (5, (16, 64, 256))
