"""FavorAttention over random shapes and configurations (hypothesis): the fast path is the
textbook estimator, and causal outputs never depend on later tokens."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from favor.ops import FavorAttention
from favor.ops.reference import favor_attention_reference
from tests.helpers import qkv

# Kernels and projections without calibration or training: their estimator is a function of
# the drawn projection alone, which the reference takes as it is.
KERNELS = st.sampled_from(["posrf", "hyperbolic", "trigrf", "relu"])
PROJECTIONS = st.sampled_from(["gaussian", "orf", "qmc"])


@st.composite
def configurations(draw: st.DrawFn) -> dict:
    return {
        "batch": draw(st.integers(1, 3)),
        "heads": draw(st.integers(1, 3)),
        "length": draw(st.integers(1, 40)),
        "dim": draw(st.sampled_from([4, 8, 16])),
        "dim_value": draw(st.integers(1, 8)),
        "nb_features": draw(st.integers(1, 24)),
        "chunk_size": draw(st.integers(1, 16)),
        "kernel": draw(KERNELS),
        "projection": draw(PROJECTIONS),
        "causal": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _attention(c: dict) -> FavorAttention:
    return FavorAttention(
        c["dim"], c["nb_features"], causal=c["causal"], kernel=c["kernel"],
        projection=c["projection"], chunk_size=c["chunk_size"], seed=c["seed"],
    )  # fmt: skip


def _inputs(c: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return qkv(
        c["batch"], c["heads"], c["length"], c["dim"], dim_value=c["dim_value"], seed=c["seed"],
        dtype=dtype,
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(configurations())
def test_fast_path_is_the_textbook_estimator(c):
    attention = _attention(c).double()
    q, k, v = _inputs(c, torch.float64)
    expected = favor_attention_reference(
        q, k, v, attention.projection_matrix, c["kernel"], causal=c["causal"]
    )
    torch.testing.assert_close(attention(q, k, v), expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(configurations(), st.data())
def test_causal_outputs_before_a_position_ignore_everything_after_it(c, data):
    attention = _attention(c | {"causal": True})
    q, k, v = _inputs(c, torch.float32)
    cut = data.draw(st.integers(0, c["length"] - 1), label="first changed position")
    changed_q, changed_k, changed_v = q.clone(), k.clone(), v.clone()
    for t in (changed_q, changed_k, changed_v):
        t[:, :, cut:] = 1e3 * torch.randn_like(t[:, :, cut:])
    before = attention(q, k, v)[:, :, :cut]
    after = attention(changed_q, changed_k, changed_v)[:, :, :cut]
    assert torch.equal(before, after)
    assert torch.isfinite(before).all()
