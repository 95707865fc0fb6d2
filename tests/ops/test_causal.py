"""Chunked prefix sums and the recurrent step agree with the materialized causal reference."""

import pytest
import torch

from favor.ops.causal import causal_chunked, causal_step
from favor.ops.reference import causal_materialized

CHUNK = 16
LENGTHS = {"1": 1, "C-1": CHUNK - 1, "C": CHUNK, "C+1": CHUNK + 1, "5C+3": 5 * CHUNK + 3}


def _inputs(length: int, *, batch: int = 2, heads: int = 3, features: int = 12, width: int = 5):
    gen = torch.Generator().manual_seed(length)
    phi_q = torch.rand(batch, heads, length, features, generator=gen, dtype=torch.float64)
    phi_k = torch.rand(batch, heads, length, features, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, heads, length, width, generator=gen, dtype=torch.float64)
    state = torch.rand(batch, heads, features, width, generator=gen, dtype=torch.float64) * length
    return phi_q, phi_k, values, state


def _fp32_close(actual, expected):
    # Agreement to float32 rounding: the forms sum in different orders, so allow a few ulps of
    # the largest magnitude involved.
    torch.testing.assert_close(
        actual.double(), expected, rtol=2e-6, atol=2e-6 * expected.abs().max().item()
    )


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "continued"])
@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_chunked_matches_materialized(length, with_state):
    phi_q, phi_k, values, state = _inputs(length)
    state = state if with_state else None
    expected, expected_state = causal_materialized(phi_q, phi_k, values, state)
    args = [t.float() for t in (phi_q, phi_k, values)]
    out, new_state = causal_chunked(
        *args, None if state is None else state.float(), chunk_size=CHUNK
    )
    _fp32_close(out, expected)
    _fp32_close(new_state, expected_state)


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "continued"])
@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_recurrent_steps_match_materialized(length, with_state):
    phi_q, phi_k, values, state = _inputs(length)
    expected, expected_state = causal_materialized(
        phi_q, phi_k, values, state if with_state else None
    )
    running = state.float() if with_state else torch.zeros_like(state, dtype=torch.float32)
    outs = []
    for t in range(length):
        out, running = causal_step(
            phi_q[:, :, t].float(), phi_k[:, :, t].float(), values[:, :, t].float(), running
        )
        outs.append(out)
    _fp32_close(torch.stack(outs, dim=2), expected)
    _fp32_close(running, expected_state)


def test_chunked_never_materializes_per_token_state():
    # The point of chunking: no tensor of size N * M * E. Record every intermediate's size.
    length, features, width = 4 * CHUNK, 12, 5
    phi_q, phi_k, values, _ = _inputs(length, batch=1, heads=1, features=features, width=width)
    sizes = []

    class Recorder(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor):
                sizes.append(result.numel())
            return result

    with Recorder():
        causal_chunked(phi_q, phi_k, values, chunk_size=CHUNK)
    assert max(sizes) < length * features * width / 2, max(sizes)
