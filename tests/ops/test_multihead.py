"""MultiheadFavorAttention as a drop-in for nn.MultiheadAttention."""

import pytest
import torch
from torch import nn

from favor.ops import FavorAttention, MultiheadFavorAttention
from favor.ops.attention_config import AttentionConfig
from tests.helpers import rel_rms_error

EMBED, HEADS = 32, 4


def _pair(*, kdim=None, vdim=None, causal=False, nb_features=4096):
    """An nn.MultiheadAttention and ours with the same projection weights."""
    torch.manual_seed(0)
    exact = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, kdim=kdim, vdim=vdim)
    ours = MultiheadFavorAttention(
        EMBED, HEADS, kdim=kdim, vdim=vdim, causal=causal, nb_features=nb_features
    )
    with torch.no_grad():
        if kdim is None and vdim is None:
            wq, wk, wv = exact.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = exact.q_proj_weight, exact.k_proj_weight, exact.v_proj_weight
        bq, bk, bv = exact.in_proj_bias.chunk(3)
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(exact.out_proj.weight)
        ours.out_proj.bias.copy_(exact.out_proj.bias)
    return exact, ours


CASES = {
    "self": dict(kdim=None, vdim=None, lengths=(40, 40)),
    "cross": dict(kdim=24, vdim=20, lengths=(30, 50)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_nn_multihead_attention(case):
    exact, ours = _pair(kdim=case["kdim"], vdim=case["vdim"])
    nq, nk = case["lengths"]
    query = torch.randn(2, nq, EMBED) * 0.5
    key = torch.randn(2, nk, case["kdim"] or EMBED) * 0.5
    value = torch.randn(2, nk, case["vdim"] or EMBED)
    mask = torch.zeros(2, nk, dtype=torch.bool)
    mask[1, nk - 7 :] = True
    expected, _ = exact(query, key, value, key_padding_mask=mask)
    out, weights = ours(query, key, value, key_padding_mask=mask)
    assert weights is None
    assert out.shape == expected.shape
    assert rel_rms_error(out, expected) < 0.05


def test_causal_matches_nn_multihead_attention_with_causal_mask():
    exact, ours = _pair(causal=True)
    x = torch.randn(2, 40, EMBED) * 0.5
    mask = nn.Transformer.generate_square_subsequent_mask(40)
    expected, _ = exact(x, x, x, attn_mask=mask, is_causal=True)
    assert rel_rms_error(ours(x, x, x)[0], expected) < 0.05


def test_sequence_first_layout_matches_batch_first():
    _, ours = _pair(nb_features=64)
    seq_first = MultiheadFavorAttention(EMBED, HEADS, batch_first=False, nb_features=64)
    seq_first.load_state_dict(ours.state_dict())
    x = torch.randn(3, 11, EMBED)
    torch.testing.assert_close(
        seq_first(*(x.transpose(0, 1),) * 3)[0], ours(x, x, x)[0].transpose(0, 1)
    )


def test_causal_state_continues_across_calls():
    _, ours = _pair(causal=True, nb_features=64)
    x = torch.randn(2, 30, EMBED)
    whole, _ = ours(x, x, x)
    first, _, state = ours(x[:, :13], x[:, :13], x[:, :13], return_state=True)
    second, _, _ = ours(x[:, 13:], x[:, 13:], x[:, 13:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-6)


BAD = {
    "attn_mask": (dict(attn_mask=torch.zeros(5, 5)), "attn_mask is not supported"),
    "query-width": (
        dict(query=torch.randn(2, 5, 8)),
        r"query must have shape \(B, N, E\) with E=32",
    ),
    "value-rank": (dict(value=torch.randn(5, EMBED)), "value must have shape"),
}


@pytest.mark.parametrize(("override", "message"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_a_value_error(override, message):
    x = torch.randn(2, 5, EMBED)
    args = dict(query=x, key=x, value=x) | override
    with pytest.raises(ValueError, match=message):
        MultiheadFavorAttention(EMBED, HEADS, nb_features=8)(**args)


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiheadFavorAttention(30, 4)


def test_default_attention_is_favor_attentions_default():
    assert MultiheadFavorAttention(EMBED, HEADS).attention.config() == FavorAttention(8).config()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_config_reaches_the_attention(causal):
    config = AttentionConfig(nb_features=8, kernel="trigrf", orf_norm="sqrt_d", seed=3)
    module = MultiheadFavorAttention(EMBED, HEADS, causal=causal, attention=config)
    assert module.attention.config() == {"dim_head": 8, "causal": causal, **config.to_json()}


def test_keywords_override_the_attention_config():
    config = AttentionConfig(nb_features=8, seed=3)
    module = MultiheadFavorAttention(EMBED, HEADS, attention=config, seed=9, orf_norm="sqrt_d")
    assert module.attention.config() == FavorAttention(8, 8, seed=9, orf_norm="sqrt_d").config()
