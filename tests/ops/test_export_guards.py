"""torch.export with a named dynamic sequence dim from 1 up: nothing specializes on the length.

A guard on the length either fails the export ("Constraints violated") or narrows the dim's
range, and a deferred one becomes an assertion node in the graph. Each test exports once at
one example length, checks that the sequence dim kept the whole range [1, inf) and that the
graph asserts nothing, then runs the program on both sides of chunk boundaries, one token
included, against eager PyTorch.
"""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._sympy.numbers import int_oo

from favor.exporter import load_model
from favor.exporter.model_specs import exportable
from favor.ops import KERNELS, FavorAttention
from favor.ops.causal import causal_chunked, chunk_layout
from tests.helpers import qkv
from tests.ops.test_export import StatefulAttention

SAMPLE_LM = Path(__file__).resolve().parents[2] / "samples" / "char_lm" / "char_lm.pt"
CHUNK = 64
EXAMPLE = 2 * CHUNK + 5
LENGTHS = {"1": 1, "C-1": CHUNK - 1, "C": CHUNK, "C+1": CHUNK + 1, "300": 300}
# (batch, seq) for the LM: every length above, and decode at batch 2.
LM_CASES = [(1, 1), (2, 1), (1, CHUNK - 1), (2, CHUNK), (1, CHUNK + 1), (2, 300)]


def _export(module: nn.Module, example: tuple, axes: list[dict[int, str]]):
    """``module`` exported at ``example``, input ``i`` with dim names ``axes[i]`` (axis: name)."""
    dims = {name: torch.export.Dim(name, min=1) for name in ("batch", "seq")}
    shapes = torch.export.ShapesCollection()
    for tensor, named in zip(example, axes, strict=True):
        if named:
            shapes[tensor] = {axis: dims[name] for axis, name in named.items()}
    with torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=shapes)


def _assert_length_free(program: torch.export.ExportedProgram, axis: int) -> None:
    """The first input's ``axis`` ranges over [1, inf), and the graph asserts nothing of sizes."""
    first = program.graph_signature.user_inputs[0]
    (node,) = (n for n in program.graph.nodes if n.name == first)
    bounds = program.range_constraints[node.meta["val"].shape[axis].node.expr]
    assert (bounds.lower, bounds.upper) == (1, int_oo)
    checks = ("_assert_scalar", "constrain_range")  # deferred guards on sizes
    asserts = [
        n.format_node() for n in program.graph.nodes if any(c in str(n.target) for c in checks)
    ]
    assert not asserts


def _assert_same(got: tuple, want: tuple) -> None:
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


class _Chunked(nn.Module):
    def forward(self, phi_q, phi_k, values, state):
        return causal_chunked(phi_q, phi_k, values, state, chunk_size=CHUNK)


def _features(batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    phi_q, phi_k = (torch.rand(batch, 3, length, 12, generator=gen) for _ in range(2))
    values = torch.randn(batch, 3, length, 5, generator=gen)
    return phi_q, phi_k, values, torch.rand(batch, 3, 12, 5, generator=gen)


def test_causal_chunked_exports_for_every_length():
    example = _features(2, EXAMPLE, seed=0)
    program = _export(_Chunked(), example, [{0: "batch", 2: "seq"}] * 3 + [{0: "batch"}])
    _assert_length_free(program, axis=2)
    exported = program.module()
    for length in LENGTHS.values():
        inputs = _features(1, length, seed=length)
        _assert_same(exported(*inputs), _Chunked()(*inputs))


@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_attention_exports_for_every_length(kernel):
    attention = FavorAttention(16, 24, causal=True, kernel=kernel, chunk_size=CHUNK)
    cal_q, cal_k, _ = qkv(2, 2, 30, 16, seed=7)
    attention.calibrate_(cal_q * 0.5, cal_k * 1.5)  # data-dependent kernels carry a state then
    module = StatefulAttention(attention).eval()
    with torch.no_grad():
        _, state = attention(*qkv(2, 2, 5, 16, seed=1), return_state=True)
    program = _export(
        module, (*qkv(2, 2, EXAMPLE, 16), state), [{0: "batch", 2: "seq"}] * 3 + [{0: "batch"}]
    )
    _assert_length_free(program, axis=2)
    exported = program.module()
    for length in LENGTHS.values():
        inputs = (*qkv(2, 2, length, 16, seed=length), state)
        with torch.no_grad():
            _assert_same(exported(*inputs), module(*inputs))


def test_sample_lm_spec_module_exports_for_every_length():
    module, spec = exportable(load_model(SAMPLE_LM).module, [])
    assert spec.chunk_size == CHUNK
    example = spec.example()
    axes = [{i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in spec.inputs]
    program = _export(module, example, axes)
    _assert_length_free(program, axis=1)
    exported = program.module()
    for batch, length in LM_CASES:
        inputs = spec.sample({"batch": batch, "seq": length}, seed=length)
        with torch.no_grad():
            _assert_same(exported(*inputs), module(*inputs))


@pytest.mark.parametrize("chunk", [1, 2, 8, 64])
def test_chunk_layout_covers_every_length_with_little_padding(chunk):
    for length in range(1, 5 * chunk + 40):
        count, size = chunk_layout(length, chunk)
        assert count * size >= length
        if length == 1:
            assert (count, size) == (1, 1)  # a decode step costs one token
            continue
        assert 2 <= count <= max(-(-length // chunk), 2)
        assert 2 <= size <= max(chunk, 2)
        if chunk > 1 and length > 2:
            assert count * size - length < count
        # Traced, sizes are 0-d tensors: the same layout.
        traced = chunk_layout(torch.tensor(length), chunk)
        assert tuple(int(t) for t in traced) == (count, size)
