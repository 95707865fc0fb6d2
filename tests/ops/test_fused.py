"""The fused causal op: the same numbers as the plain forms, traced as one op."""

import pytest
import torch

from favor.ops import FavorAttention
from favor.ops.causal import causal_materialized
from favor.ops.fused import causal_layers, causal_linear_attention, fused_causal_attention
from favor.ops.models import PerformerEncoder, PerformerLM
from tests.helpers import assert_fp32_close, qkv

CHUNK = 16
LENGTHS = {"1": 1, "C-1": CHUNK - 1, "C": CHUNK, "C+1": CHUNK + 1, "5C+3": 5 * CHUNK + 3}


@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "continued"])
@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_op_matches_materialized_reference(length, with_state):
    gen = torch.Generator().manual_seed(length)
    phi_q, phi_k = (torch.rand(2, 3, length, 12, generator=gen) for _ in range(2))
    values = torch.randn(2, 3, length, 5, generator=gen)
    state = torch.rand(2, 3, 12, 5, generator=gen) * length if with_state else None
    expected, expected_state = causal_materialized(
        *(t.double() for t in (phi_q, phi_k, values)), None if state is None else state.double()
    )
    out, new_state = causal_linear_attention(phi_q, phi_k, values, state, CHUNK)
    assert_fp32_close(out, expected)
    assert_fp32_close(new_state, expected_state)


def test_fused_layer_gives_the_same_outputs_and_state():
    attn = FavorAttention(16, 24, causal=True, chunk_size=CHUNK, seed=3)
    q, k, v = qkv(2, 3, 50, 16)
    plain, plain_state = attn(q, k, v, return_state=True)
    with fused_causal_attention(attn):
        fused, fused_state = attn(q, k, v, return_state=True)
        continued, _ = attn(q, k, v, state=fused_state, return_state=True)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    torch.testing.assert_close(fused_state, plain_state, rtol=0, atol=0)
    torch.testing.assert_close(continued, attn(q, k, v, state=plain_state), rtol=0, atol=0)


def test_export_sees_one_op_per_causal_layer():
    lm = PerformerLM(20, 32, 3, 2, nb_features=8, chunk_size=CHUNK).eval()
    tokens = torch.randint(0, 20, (1, 40))
    with fused_causal_attention(lm):
        program = torch.export.export(lm, (tokens,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.favor.causal_linear_attention.default) == 3
    assert torch.ops.aten.cumsum.default not in targets


def test_context_switches_only_causal_layers_and_restores_them_after_an_error():
    lm = PerformerLM(20, 32, 2, 2, nb_features=8)
    encoder = PerformerEncoder(20, 32, 2, 2, num_classes=2, nb_features=8)
    assert len(causal_layers(lm)) == 2
    assert causal_layers(encoder) == []
    with pytest.raises(RuntimeError, match="inside"), fused_causal_attention(lm):
        assert all(layer.fused for layer in causal_layers(lm))
        raise RuntimeError("inside")
    assert not any(layer.fused for layer in causal_layers(lm))
