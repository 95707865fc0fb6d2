"""The fused causal op: the numbers of the textbook forms, traced as one op."""

import pytest
import torch

from favor.ops import FavorAttention, causal_layers, fused_causal_attention
from favor.ops.fused import causal_linear_attention
from favor.ops.models import PerformerEncoder, PerformerLM
from favor.ops.reference import causal_materialized, favor_attention_reference
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


def test_fused_layer_matches_the_textbook_attention_and_continues_from_its_state():
    length = 50
    attn = FavorAttention(16, 24, causal=True, chunk_size=CHUNK, seed=3).double()
    q, k, v = qkv(2, 3, length, 16, dtype=torch.float64)

    def textbook(q, k, v):
        return favor_attention_reference(q, k, v, attn.projection_matrix, "posrf", causal=True)

    with fused_causal_attention(attn):
        out, state = attn(q, k, v, return_state=True)
        continued = attn(q, k, v, state=state)
    torch.testing.assert_close(out, textbook(q, k, v), rtol=1e-9, atol=1e-9)
    # The state stands for the first call's tokens: continuing from it is the second half of
    # one sequence that holds the tokens twice.
    twice = textbook(*(torch.cat([t, t], dim=2) for t in (q, k, v)))
    torch.testing.assert_close(continued, twice[:, :, length:], rtol=1e-9, atol=1e-9)


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
