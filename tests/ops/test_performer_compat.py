"""performer-pytorch's architecture on favor.ops, checked against performer-pytorch itself.

Each original model gets random weights, which are carried over with a strict state_dict load;
both run in eval mode on the same input.
"""

import json

import numpy as np
import pytest
import torch
from performer_pytorch import Performer, PerformerLM
from performer_pytorch import performer_pytorch as original_module
from torch import nn

from favor.ops.performer_compat import CompatAttention, CompatLM, CompatPerformer
from tests.helpers import export_onnx, run_onnx
from tests.ops.test_export import FlatLM

VOCAB, LENGTH = 40, 50
SIZES = dict(dim=32, depth=2, heads=2, dim_head=16, nb_features=16)
LM_SIZES = dict(num_tokens=VOCAB, max_seq_len=64, **SIZES)
MAPS = {
    "softmax": {},
    "relu": {"generalized_attention": True},
    "identity": {"no_projection": True},
}
# Options beyond the attention map, each alone.
LM_OPTIONS = {
    "absolute-positions": {"rotary_position_emb": False},
    "scalenorm": {"use_scalenorm": True},
    "rezero": {"use_rezero": True},
    "glu": {"ff_glu": True},
    "tied": {"tie_embed": True},
    "biases": {"qkv_bias": True, "attn_out_bias": True},
    "ff-chunks": {"ff_chunks": 2},
    "default-features": {"nb_features": None},
}
# Accepted but without effect in eval mode, or ignored by performer itself.
INERT_OPTIONS = {
    "dropout": {"emb_dropout": 0.1, "ff_dropout": 0.1, "attn_dropout": 0.1},
    "redraw": {"feature_redraw_interval": None, "auto_check_redraw": False},
    "local-window": {"local_window_size": 32},
    "axial-under-rotary": {"axial_position_emb": True},
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Perturb every parameter, so that norms, gains and biases all matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def _carried_over(original: nn.Module, compat: nn.Module, dtype: torch.dtype):
    _randomize(original)
    compat.load_state_dict(original.state_dict(), strict=True)
    return original.to(dtype).eval(), compat.to(dtype).eval()


def _lm_pair(dtype=torch.float32, **options):
    options = {**LM_SIZES, **options}
    torch.manual_seed(0)
    return _carried_over(PerformerLM(**options), CompatLM(**options), dtype)


def _stack_pair(dtype=torch.float32, **options):
    options = {**SIZES, **options}
    torch.manual_seed(0)
    return _carried_over(Performer(**options), CompatPerformer(**options), dtype)


def _tokens(batch: int = 3, length: int = LENGTH, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _mask(batch: int = 3, length: int = LENGTH) -> torch.Tensor:
    """True at real tokens: one sequence padded at the end, one at the start."""
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length - 20 :] = False
    mask[2, :5] = False
    return mask


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference over the largest magnitude of the expected value."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


MASKS = {"no-mask": False, "mask": True}
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("masked", MASKS.values(), ids=MASKS)
@pytest.mark.parametrize(
    "options", [*MAPS.values(), *LM_OPTIONS.values()], ids=[*MAPS, *LM_OPTIONS]
)
def test_bidirectional_lm_matches_performer(options, masked, dtype):
    original, compat = _lm_pair(dtype, **options)
    tokens, mask = _tokens(), (_mask() if masked else None)
    with torch.no_grad():
        expected, actual = original(tokens, mask=mask), compat(tokens, mask=mask)
    assert _rel_error(actual, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("masked", MASKS.values(), ids=MASKS)
@pytest.mark.parametrize("options", MAPS.values(), ids=MAPS)
def test_bidirectional_stack_matches_performer(options, masked, dtype):
    original, compat = _stack_pair(dtype, **options)
    x = torch.randn(3, LENGTH, SIZES["dim"], generator=torch.Generator().manual_seed(3))
    x, mask = x.to(dtype), (_mask() if masked else None)
    with torch.no_grad():
        expected, actual = original(x, mask=mask), compat(x, mask=mask)
    assert _rel_error(actual, expected) <= TOLERANCE[dtype]


def _without_eps_terms(monkeypatch, compat: CompatLM) -> None:
    """Zero the eps terms that differ: the softmax features' and performer's causal denominator's.

    ReLU features add the same eps on both sides, so it stays.
    """
    monkeypatch.setitem(original_module.softmax_kernel.__kwdefaults__, "eps", 0.0)
    monkeypatch.setattr(original_module.causal_linear_attention_noncuda, "__defaults__", (128, 0.0))
    monkeypatch.setattr(original_module.causal_linear_attention, "__defaults__", (0.0,))
    for layer in compat.performer.attention_layers():
        layer.softmax_eps = 0.0


@pytest.mark.parametrize("options", MAPS.values(), ids=MAPS)
def test_causal_lm_matches_performer_up_to_its_eps_terms(monkeypatch, options):
    """Without those eps terms, causal attention is performer's exactly, leak-free softmax too:
    its shifts differ from performer's by one factor per (batch, head) only."""
    original, compat = _lm_pair(torch.float64, causal=True, **options)
    _without_eps_terms(monkeypatch, compat)
    with torch.no_grad():
        assert _rel_error(compat(_tokens()), original(_tokens())) <= 1e-12


# Measured: 4.5e-6 (relu) and 4.1e-7 (identity) from performer's 1e-6 on its causal denominator.
@pytest.mark.parametrize("options", [MAPS["relu"], MAPS["identity"]], ids=["relu", "identity"])
def test_causal_relu_and_identity_match_performer(options):
    original, compat = _lm_pair(torch.float64, causal=True, **options)
    tokens, mask = _tokens(), _mask()
    with torch.no_grad():
        assert _rel_error(compat(tokens, mask=mask), original(tokens, mask=mask)) <= 2e-5


def test_causal_softmax_is_close_to_performer():
    """The eps terms weigh differently without performer's look-ahead: measured on these
    weights, logits differ by at most 0.59 (0.22 of the largest) and the top-1 token agrees at
    91%."""
    original, compat = _lm_pair(causal=True)
    tokens = _tokens(batch=4, length=64, seed=0)
    with torch.no_grad():
        expected, actual = original(tokens), compat(tokens)
    assert (actual - expected).abs().max().item() < 1.0
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean().item() > 0.8


def _with_later_tokens_changed(model: nn.Module, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs before ``cut``, for the tokens and for the tokens with everything after changed."""
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, cut:] = (tokens[:, cut:] + 7) % VOCAB
    with torch.no_grad():
        return model(tokens)[:, :cut], model(changed)[:, :cut]


@pytest.mark.parametrize("options", MAPS.values(), ids=MAPS)
def test_causal_lm_reads_no_later_token(options):
    _, compat = _lm_pair(causal=True, **options)
    before, after = _with_later_tokens_changed(compat, 20)
    assert torch.equal(before, after)


def test_performers_causal_softmax_reads_later_tokens():
    """The contrast: performer's key shift is a maximum over the whole sequence."""
    original, _ = _lm_pair(causal=True)
    before, after = _with_later_tokens_changed(original, 20)
    assert not torch.equal(before, after)


def _causal_lm(**options) -> CompatLM:
    torch.manual_seed(0)
    compat = CompatLM(**{**LM_SIZES, "causal": True, "chunk_size": 8, **options})
    _randomize(compat)
    return compat.double().eval()


@pytest.mark.parametrize("options", MAPS.values(), ids=MAPS)
def test_pieces_with_carried_state_equal_one_call(options):
    lm = _causal_lm(**options)
    tokens = _tokens(length=27)
    with torch.no_grad():
        full = lm(tokens)
        pieces, state, start = [], None, 0
        for length in (11, 1, 8, 7):  # a piece of one token; lengths off the chunk size
            logits, state = lm(tokens[:, start : start + length], state, return_state=True)
            pieces.append(logits)
            start += length
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)
    assert state[0].tolist() == [27, 27, 27]


@pytest.mark.parametrize(
    ("options", "features"),
    [(MAPS["softmax"], 24), (MAPS["relu"], 24), (MAPS["identity"], 16)],
    ids=MAPS,
)
def test_initial_state_has_favors_layout(options, features):
    """(offsets, kv_0, kv_1): kv_i (B, heads, M', dim_head + 1), M' = dim_head for identity."""
    lm = _causal_lm(nb_features=24, **options)
    offsets, *layers = lm.initial_state(3)
    assert offsets.dtype == torch.int64 and offsets.tolist() == [0, 0, 0]
    assert [(t.shape, t.dtype) for t in layers] == [((3, 2, features, 17), torch.float32)] * 2


@pytest.mark.parametrize("feature_map", ["softmax", "relu", "identity"])
def test_attention_step_equals_forward(feature_map):
    attention = CompatAttention(16, 16, causal=True, feature_map=feature_map, chunk_size=4)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    outputs, state = [], None
    for t in range(9):
        out, state = attention.step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        outputs.append(out)
    torch.testing.assert_close(torch.stack(outputs, 2), attention(q, k, v))


@pytest.mark.parametrize("feature_map", ["softmax", "relu", "identity"])
def test_attention_padding_keys_count_for_nothing(feature_map):
    """Padded keys stay out of the sequence-wide normalizations: as if they were not there."""
    attention = CompatAttention(16, 16, feature_map=feature_map)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    padding = torch.zeros(1, 12, dtype=torch.bool)
    padding[:, 8:] = True
    torch.testing.assert_close(
        attention(q, k, v, key_padding_mask=padding), attention(q, k[:, :, :8], v[:, :, :8])
    )


def test_position_past_max_seq_len_is_an_error():
    lm = _causal_lm()
    offsets, *layers = lm.initial_state(1)
    with pytest.raises(ValueError, match="max_seq_len"):
        lm(_tokens(1, 5), (offsets + 60, *layers))


def test_bidirectional_models_carry_no_state():
    lm = CompatLM(**LM_SIZES)
    with pytest.raises(ValueError, match="causal"):
        lm(_tokens(), return_state=True)
    with pytest.raises(ValueError, match="softmax"):
        CompatAttention(16)(*torch.randn(3, 1, 1, 4, 16), return_state=True)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    # key_shift is favor's own (causal softmax's fixed key shift), loaded when absent.
    return {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not name.endswith("key_shift")
    }


SUPPORTED = {
    **{f"lm-{name}": (PerformerLM, CompatLM, opts) for name, opts in MAPS.items()},
    **{f"lm-{name}": (PerformerLM, CompatLM, opts) for name, opts in LM_OPTIONS.items()},
    **{f"lm-{name}": (PerformerLM, CompatLM, opts) for name, opts in INERT_OPTIONS.items()},
    **{f"lm-causal-{name}": (PerformerLM, CompatLM, {"causal": True, **o}) for name, o in MAPS.items()},
    **{f"stack-{name}": (Performer, CompatPerformer, opts) for name, opts in MAPS.items()},
    "stack-causal": (Performer, CompatPerformer, {"causal": True}),
    "stack-rezero": (Performer, CompatPerformer, {"use_rezero": True}),
    "stack-no-biases": (Performer, CompatPerformer, {"qkv_bias": False, "attn_out_bias": False}),
    "stack-dim-head-from-heads": (Performer, CompatPerformer, {"dim_head": None}),
}  # fmt: skip


@pytest.mark.parametrize(
    ("original_class", "compat_class", "options"), SUPPORTED.values(), ids=SUPPORTED
)
def test_state_dict_is_performers(original_class, compat_class, options):
    sizes = LM_SIZES if original_class is PerformerLM else SIZES
    original = original_class(**{**sizes, **options})
    compat = compat_class(**{**sizes, **options})
    assert _shapes(compat) == _shapes(original)
    compat.load_state_dict(original.state_dict(), strict=True)


def test_fresh_sinusoids_are_performers():
    """The fixed tables a fresh model starts from, before any state_dict is loaded."""
    original, compat = PerformerLM(**LM_SIZES), CompatLM(**LM_SIZES)
    for name in ("pos_emb.emb", "layer_pos_emb.emb"):
        torch.testing.assert_close(compat.get_buffer(name), original.get_buffer(name))


@pytest.mark.parametrize(
    ("compat_class", "options"),
    [(CompatLM, {**LM_SIZES, "causal": True, "use_rezero": True, "chunk_size": 8}),
     (CompatLM, {**LM_SIZES, "no_projection": True, "rotary_position_emb": False}),
     (CompatPerformer, {**SIZES, "generalized_attention": True, "dim_head": None})],
    ids=["causal-lm", "bidirectional-lm", "stack"],
)  # fmt: skip
def test_config_rebuilds_the_model(compat_class, options):
    model = compat_class(**options).eval()
    rebuilt = compat_class(**json.loads(json.dumps(model.config()))).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    inputs = _tokens() if compat_class is CompatLM else torch.randn(3, LENGTH, SIZES["dim"])
    assert torch.equal(rebuilt(inputs), model(inputs))


def test_lm_config_names_performers_options_and_favors():
    lm = CompatLM(**LM_SIZES, causal=True, chunk_size=8)
    config = lm.config()
    assert (config["num_tokens"], config["chunk_size"], lm.vocab_size) == (VOCAB, 8, VOCAB)
    # PerformerLM's own defaults, not Performer's
    assert (config["qkv_bias"], config["attn_out_bias"]) == (False, False)


UNSUPPORTED = {
    "reversible": ({"reversible": True}, "reversible"),
    "local-heads": ({"local_attn_heads": 1}, "local_attn_heads"),
    "local-heads-per-layer": ({"local_attn_heads": (0, 1)}, "local_attn_heads"),
    "cross-attend": ({"cross_attend": True}, "cross_attend"),
    "shift-tokens": ({"shift_tokens": True}, "shift_tokens"),
    "axial": ({"axial_position_emb": True, "rotary_position_emb": False}, "axial_position_emb"),
}


@pytest.mark.parametrize(("options", "name"), UNSUPPORTED.values(), ids=UNSUPPORTED)
def test_unsupported_options_raise_naming_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        CompatLM(**LM_SIZES, **options)


def test_other_kernel_functions_are_not_options():
    with pytest.raises(TypeError, match="kernel_fn"):
        CompatLM(**LM_SIZES, generalized_attention=True, kernel_fn=nn.Tanh())


def _step_inputs(lm: CompatLM, batch: int, length: int, offset: int = 0) -> dict[str, torch.Tensor]:
    """:class:`FlatLM`'s inputs: tokens and a state ``offset`` tokens into the sequences."""
    offsets, kv0, kv1 = lm.initial_state(batch)
    return {"tokens": _tokens(batch, length), "offsets": offsets + offset, "kv0": kv0, "kv1": kv1}


# Decode, lengths off the chunk size and a whole number of chunks, other batch sizes.
OTHER_SIZES = ((1, 1, 5), (3, 20, 3), (2, 16, 0))


@pytest.mark.parametrize("options", MAPS.values(), ids=MAPS)
def test_causal_lm_traces_and_exports(options):
    """Recorded once at one size, then run at others against eager mode."""
    step = FlatLM(_causal_lm(**options).float()).eval()
    example = tuple(_step_inputs(step.lm, 2, 13).values())
    dynamic = torch.export.Dim.DYNAMIC
    shapes = ({0: dynamic, 1: dynamic}, *({0: dynamic},) * 3)
    with torch.no_grad():
        traced = torch.jit.trace(step, example, check_trace=False)
        program = torch.export.export(step, example, dynamic_shapes=shapes, strict=False)
    # The program's guards pin the example's padding to whole chunks; its graph does not
    # depend on it, and the ONNX exporter does not keep the guards.
    exported = program.module(check_guards=False)
    for size in OTHER_SIZES:
        args = tuple(_step_inputs(step.lm, *size).values())
        with torch.no_grad():
            expected = step(*args)
            for recorded in (traced, exported):
                for actual, want in zip(recorded(*args), expected, strict=True):
                    torch.testing.assert_close(actual, want)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_causal_lm_runs_in_onnx_runtime(tmp_path, exporter):
    """At opset 17, the export default; GLU and rotary split tensors, which must stay valid."""
    step = FlatLM(_causal_lm(ff_glu=True).float()).eval()
    names = list(_step_inputs(step.lm, 1, 1))
    dynamic = {name: {0: "batch"} for name in names} | {"tokens": {0: "batch", 1: "seq"}}
    session = export_onnx(
        step, tuple(_step_inputs(step.lm, 2, 13).values()), tmp_path / "lm.onnx", input_names=names,
        output_names=["logits", "new_offsets", "new_kv0", "new_kv1"], dynamic=dynamic,
        exporter=exporter,
    )  # fmt: skip
    for size in OTHER_SIZES:
        inputs = _step_inputs(step.lm, *size)
        with torch.no_grad():
            expected = step(*inputs.values())
        for actual, want in zip(run_onnx(session, **inputs), expected, strict=True):
            np.testing.assert_allclose(actual, want.numpy(), rtol=1e-4, atol=1e-5)


def test_a_fixed_key_shift_equal_to_the_sequence_maximum_reproduces_causal_softmax():
    """performer's causal softmax with its sequence-wide key maximum equal to the fixed shift:
    the outputs are performer's, eps terms included."""
    torch.manual_seed(0)
    original = PerformerLM(**LM_SIZES, causal=True).eval()
    compat = CompatLM(**LM_SIZES, causal=True).eval()
    compat.load_state_dict(original.state_dict(), strict=True)
    tokens = torch.randint(0, LM_SIZES["num_tokens"], (1, 32))
    maxima = []

    def record(fast, args):
        keys = args[1]
        projected = (keys * keys.shape[-1] ** -0.25) @ fast.projection_matrix.T
        maxima.append(projected.amax(dim=(-1, -2))[0])

    hooks = [
        m.register_forward_pre_hook(record)
        for m in original.modules()
        if type(m).__name__ == "FastAttention"
    ]
    with torch.no_grad():
        expected = original(tokens)
    for hook in hooks:
        hook.remove()
    layers = [m for m in compat.modules() if isinstance(m, CompatAttention)]
    for layer, shift in zip(layers, maxima, strict=True):
        layer.set_key_shift(shift)
    with torch.no_grad():
        got = compat(tokens)
    # Only performer's 1e-6 denominator eps is left.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError):  # without the shift, the eps terms weigh otherwise
        torch.testing.assert_close(CompatLM(**LM_SIZES, causal=True).eval()(tokens), expected)


def test_a_key_shift_survives_a_favor_checkpoint_and_loads_absent_from_performers():
    compat = CompatLM(**LM_SIZES, causal=True).eval()
    layers = [m for m in compat.modules() if isinstance(m, CompatAttention)]
    for layer in layers:
        layer.set_key_shift(torch.tensor([1.5, -0.5]))
    rebuilt = CompatLM(**compat.config())
    rebuilt.load_state_dict(compat.state_dict(), strict=True)
    for layer in (m for m in rebuilt.modules() if isinstance(m, CompatAttention)):
        torch.testing.assert_close(layer.key_shift, torch.tensor([1.5, -0.5]))
    performers = PerformerLM(**LM_SIZES, causal=True).state_dict()
    rebuilt.load_state_dict(performers, strict=True)  # it has no key_shift: the shift stays
