"""The reference models: state continuity, causality, padding, configuration, and learning."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from favor.exporter import load_model, save_checkpoint
from favor.ops.attention import FavorAttention
from favor.ops.attention_config import AttentionConfig
from favor.ops.models import PerformerEncoder, PerformerLM

VOCAB = 40
MODELS = {"lm": PerformerLM, "encoder": PerformerEncoder}
# Written before orf_norm was a model option: its config has no orf_norm.
SAMPLE_CHECKPOINT = Path(__file__).resolve().parents[2] / "samples" / "char_lm" / "char_lm.pt"


def _lm(**kwargs):
    torch.manual_seed(0)
    return PerformerLM(VOCAB, 32, 2, 4, nb_features=32, chunk_size=8, **kwargs).eval()


def test_lm_prefill_then_decode_matches_one_full_pass():
    lm = _lm()
    tokens = torch.randint(0, VOCAB, (3, 27))
    full = lm(tokens)
    logits, state = lm(tokens[:, :11], return_state=True)
    pieces = [logits]
    for t in range(11, 27):
        logits, state = lm(tokens[:, t : t + 1], state, return_state=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)
    assert state[0].tolist() == [27, 27, 27]


def test_lm_state_has_constant_size():
    lm = _lm()
    sizes = {
        tuple(t.shape for t in lm(torch.zeros(1, n, dtype=torch.long), return_state=True)[1])
        for n in (1, 9, 300)
    }
    assert len(sizes) == 1


def test_lm_logits_never_depend_on_later_tokens():
    lm = _lm()
    tokens = torch.randint(0, VOCAB, (2, 30))
    changed = tokens.clone()
    changed[:, 17:] = torch.randint(0, VOCAB, (2, 13))
    torch.testing.assert_close(lm(changed)[:, :17], lm(tokens)[:, :17])


@pytest.mark.slow
def test_lm_loss_goes_down():
    torch.manual_seed(0)
    lm = PerformerLM(VOCAB, 32, 2, 4, nb_features=32, chunk_size=8)
    data = torch.arange(64).remainder(7).repeat(4, 1)  # a periodic sequence is learnable
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits = lm(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_config_rebuilds_the_same_model():
    lm = _lm(kernel="hyperbolic", projection="gaussian", seed=4)
    rebuilt = PerformerLM(**lm.config()).eval()
    rebuilt.load_state_dict(lm.state_dict())
    tokens = torch.randint(0, VOCAB, (1, 10))
    torch.testing.assert_close(rebuilt(tokens), lm(tokens))


def _row_norms(attention: FavorAttention) -> torch.Tensor:
    return attention.projection_matrix.norm(dim=1)


@pytest.mark.parametrize("model_class", MODELS.values(), ids=MODELS.keys())
def test_orf_norm_reaches_every_layer(model_class):
    model = model_class(VOCAB, 32, 2, 4, nb_features=24, seed=5, orf_norm="sqrt_d")
    for i, block in enumerate(model.blocks):
        attention = block.attn.attention
        assert attention.orf_norm == "sqrt_d"
        alone = FavorAttention(8, 24, seed=5 + i, orf_norm="sqrt_d")
        torch.testing.assert_close(_row_norms(attention), _row_norms(alone))
        torch.testing.assert_close(_row_norms(attention), torch.full((24,), 8**0.5))


def test_orf_norm_survives_config_and_checkpoint(tmp_path):
    lm = _lm(orf_norm="sqrt_d")
    config = json.loads(json.dumps(lm.config()))
    assert config["orf_norm"] == "sqrt_d"
    assert PerformerLM(**config).config() == lm.config()
    loaded = load_model(save_checkpoint(lm, tmp_path / "lm.pt")).module
    assert loaded.config() == lm.config()
    for block in loaded.blocks:
        # A redraw shows the norm the rebuilt layer draws with, not the one it loaded.
        block.attn.attention.redraw_(seed=11)
        torch.testing.assert_close(_row_norms(block.attn.attention), torch.full((32,), 8**0.5))


def test_checkpoint_from_before_orf_norm_loads_with_chi_norms():
    loaded = load_model(SAMPLE_CHECKPOINT)
    assert "orf_norm" not in loaded.config
    assert loaded.module.config()["orf_norm"] == "chi"
    assert {block.attn.attention.orf_norm for block in loaded.module.blocks} == {"chi"}


@pytest.mark.parametrize("model_class", MODELS.values(), ids=MODELS.keys())
def test_attention_config_and_keywords_build_the_same_model(model_class):
    keywords = dict(nb_features=16, kernel="hyperbolic", seed=2, chunk_size=8)
    from_config = model_class(VOCAB, 32, 2, 4, attention=AttentionConfig(**keywords))
    assert from_config.config() == model_class(VOCAB, 32, 2, 4, **keywords).config()
    overridden = model_class(VOCAB, 32, 2, 4, attention=AttentionConfig(**keywords), seed=7)
    assert [b.attn.attention.seed for b in overridden.blocks] == [7, 8]


def test_unknown_attention_option_is_a_type_error():
    with pytest.raises(TypeError, match=r"unknown attention option\(s\) 'nb_feature'"):
        PerformerLM(VOCAB, 32, 1, 4, nb_feature=16)


def test_layers_draw_different_features():
    lm = _lm()
    w0, w1 = (b.attn.attention.projection_matrix for b in lm.blocks)
    assert not torch.equal(w0, w1)


def test_encoder_classifier_ignores_padding():
    torch.manual_seed(0)
    enc = PerformerEncoder(VOCAB, 32, 2, 4, num_classes=3, nb_features=32).eval()
    short = torch.randint(1, VOCAB, (1, 12))
    padded = torch.cat([short, torch.zeros(1, 8, dtype=torch.long)], 1)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[:, 12:] = True
    torch.testing.assert_close(enc(padded, mask), enc(short), rtol=1e-5, atol=1e-6)
    assert enc(short).shape == (1, 3)
    assert PerformerEncoder(VOCAB, 32, 1, 4)(short).shape == (1, 12, 32)


BAD_LM_CALLS = {
    "float-tokens": (lambda lm: lm(torch.zeros(1, 4)), "tokens must be an integer tensor"),
    "rank-1-tokens": (
        lambda lm: lm(torch.zeros(4, dtype=torch.long)),
        "tokens must be an integer tensor",
    ),
    "short-state": (
        lambda lm: lm(torch.zeros(1, 4, dtype=torch.long), lm.initial_state(1)[:2]),
        "3 tensors",
    ),
    "offsets-batch": (
        lambda lm: lm(torch.zeros(2, 4, dtype=torch.long), lm.initial_state(1)),
        r"offsets must be an int64 tensor \(2,\)",
    ),
}


@pytest.mark.parametrize(("call", "message"), BAD_LM_CALLS.values(), ids=BAD_LM_CALLS.keys())
def test_bad_lm_input_is_a_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(_lm())
