"""The reference models: state continuity, causality, padding, and that they learn."""

import pytest
import torch
import torch.nn.functional as F

from favor.ops.models import PerformerEncoder, PerformerLM

VOCAB = 40


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
