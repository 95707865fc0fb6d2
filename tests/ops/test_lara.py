"""LaraAttention: textbook reference, SDPA, FAVOR+, lengths, padding, noise, dtypes, export."""

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from favor.exporter import load_model
from favor.ops import FavorAttention, LaraAttention
from favor.ops.reference import lara_reference
from tests.helpers import FORBIDDEN_OPS, export_onnx, qkv, rel_rms_error, run_onnx

DIM = 16
LENGTHS = {"1": 1, "N<C": 5, "N=C": 8, "3C+5": 29}


def _module(nb_features=16, *, num_proposals=8, seed=0, dim=DIM):
    return LaraAttention(dim, nb_features, num_proposals=num_proposals, seed=seed).eval()


def _ragged_mask(batch: int, length: int) -> torch.Tensor:
    """No padding in row 0; later rows lose up to about half their tokens, at one or both ends."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(1, batch):
        mask[b, : (b % 2) * (length // 4)] = True
        mask[b, length - length // (b + 2) :] = True
    return mask


def _mean_error(make, inputs, seeds) -> float:
    errors = []
    for seed in seeds:
        q, k, v = inputs(seed)
        exact = F.scaled_dot_product_attention(q, k, v)
        errors.append(rel_rms_error(make(seed).double()(q, k, v), exact))
    return sum(errors) / len(errors)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("num_proposals", [8, 3], ids=["C8", "C3"])
@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_matches_textbook_reference_in_float64(length, num_proposals, masked):
    attn = _module(4 * num_proposals, num_proposals=num_proposals).double()
    q, k, v = (t.double() for t in qkv(3, 2, length, DIM, dim_value=8, scale=1.0, seed=length))
    mask = _ragged_mask(3, length) if masked else None
    expected = lara_reference(q, k, v, attn.eps, mask)
    torch.testing.assert_close(attn(q, k, v, mask), expected, rtol=1e-10, atol=1e-10)


def test_error_against_sdpa_falls_with_nb_features():
    q, k, v = (t.double() for t in qkv(1, 2, 64, DIM, scale=0.5))
    exact = F.scaled_dot_product_attention(q, k, v)
    errors = {
        m: sum(rel_rms_error(_module(m, seed=s).double()(q, k, v), exact) for s in range(6)) / 6
        for m in (8, 64, 512, 4096)
    }
    # Measured: about 0.49, 0.28, 0.16, 0.05.
    for fewer, more in itertools.pairwise(errors):
        assert errors[more] < 0.8 * errors[fewer], errors
    assert errors[4096] < 0.1, errors


SMALL_COUNTS = {"M8": 8, "M16": 16}


def _iid_qkv(seed):
    return tuple(t.double() for t in qkv(1, 4, 64, DIM, scale=0.5, seed=1000 + seed))


def _local_qkv(seed, *, scale=0.75, segments=8, length=64):
    """q and k clustered around per-segment centres they share: each query's keys are local."""
    gen = torch.Generator().manual_seed(seed)
    segment = torch.arange(length) * segments // length
    centres = torch.randn(1, 4, segments, DIM, generator=gen, dtype=torch.float64)[:, :, segment]
    noise = torch.randn(2, 1, 4, length, DIM, generator=gen, dtype=torch.float64)
    q, k = scale * (centres + 0.3 * noise)
    return q, k, torch.randn(1, 4, length, DIM, generator=gen, dtype=torch.float64)


def _lara_and_favor_errors(nb_features, inputs):
    seeds = range(20)
    lara = _mean_error(lambda s: _module(nb_features, seed=s), inputs, seeds)
    favor = {
        projection: _mean_error(
            lambda s, p=projection: FavorAttention(DIM, nb_features, projection=p, seed=s),
            inputs,
            seeds,
        )
        for projection in ("orf", "gaussian")
    }
    return lara, favor


@pytest.mark.xfail(
    strict=True,
    reason=(
        "on iid Gaussian q, k (scale 0.5, N=64, D=16, 20 seeds) LARA does not beat FAVOR+ ORF: "
        "M=8: LARA 0.607, ORF 0.587, gaussian 0.625; M=16: LARA 0.476, ORF 0.444, gaussian 0.517. "
        "Segment means of iid tokens carry no information, so the proposals sit near N(0, I)"
    ),
)
@pytest.mark.parametrize("nb_features", SMALL_COUNTS.values(), ids=SMALL_COUNTS.keys())
def test_beats_favor_at_small_sample_counts(nb_features):
    lara, favor = _lara_and_favor_errors(nb_features, _iid_qkv)
    assert all(lara < error for error in favor.values()), (lara, favor)


@pytest.mark.parametrize("nb_features", SMALL_COUNTS.values(), ids=SMALL_COUNTS.keys())
def test_beats_favor_at_small_sample_counts_when_attention_is_local(nb_features):
    # Measured: M=8: LARA 0.63, ORF 0.82, gaussian 0.83; M=16: 0.46, 0.70, 0.75.
    lara, favor = _lara_and_favor_errors(nb_features, _local_qkv)
    assert all(lara < 0.85 * error for error in favor.values()), (lara, favor)


SAMPLE_LM = Path(__file__).resolve().parents[2] / "samples" / "char_lm"


@pytest.fixture(scope="module")
def sample_lm_qkv():
    """q, k, v entering the sample char-LM's attention layers on 256 characters of its text.

    The layers are stacked along the heads: ``(1, layers * heads, 256, D)`` float64.
    """
    model = load_model(SAMPLE_LM / "char_lm.pt").module.eval()
    vocab = json.loads((SAMPLE_LM / "vocab.json").read_text(encoding="utf-8"))
    text = (SAMPLE_LM / "corpus.txt").read_text(encoding="utf-8")
    index = {char: i for i, char in enumerate(vocab)}
    tokens = torch.tensor([[index[char] for char in text[-256:]]])
    captured = []
    layers = [m for m in model.modules() if isinstance(m, FavorAttention)]
    handles = [
        layer.register_forward_pre_hook(lambda _m, args: captured.append(args[:3]))
        for layer in layers
    ]
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    return tuple(torch.cat(parts, dim=1).double() for parts in zip(*captured, strict=True))


@pytest.mark.parametrize("nb_features", SMALL_COUNTS.values(), ids=SMALL_COUNTS.keys())
def test_beats_favor_at_small_sample_counts_on_a_trained_models_inputs(nb_features, sample_lm_qkv):
    # The paper's claim, where it matters: on q and k of a trained model (large norms, segment
    # structure) LARA's data-centred proposals beat FAVOR+'s N(0, I) samples. Measured here:
    # M = 8: LARA 0.643, ORF 0.757, gaussian 0.770; M = 16: LARA 0.627, gaussian 0.747.
    q, k, v = sample_lm_qkv
    dim = q.shape[-1]
    seeds = range(5)
    lara = _mean_error(
        lambda s: _module(nb_features, seed=s, dim=dim), lambda _s: sample_lm_qkv, seeds
    )
    for projection in ("orf", "gaussian"):
        favor = _mean_error(
            lambda s, p=projection: FavorAttention(dim, nb_features, projection=p, seed=s),
            lambda _s: (q, k, v),
            seeds,
        )
        assert lara < 0.9 * favor, (projection, lara, favor)


LENGTHS_AND_BATCHES = {"b1-n1": (1, 1), "b3-n5": (3, 5), "b2-n13": (2, 13), "b2-n64": (2, 64)}


@pytest.mark.parametrize(("batch", "length"), LENGTHS_AND_BATCHES.values(), ids=LENGTHS_AND_BATCHES)
def test_any_length_and_batch_matches_one_sequence_at_a_time(batch, length):
    attn = _module()
    q, k, v = qkv(batch, 2, length, DIM, dim_value=8, seed=length)
    out = attn(q, k, v)
    assert out.shape == (batch, 2, length, 8)
    assert torch.isfinite(out).all()
    for b in range(batch):
        single = attn(q[b : b + 1], k[b : b + 1], v[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], single, rtol=1e-5, atol=1e-6)


def test_one_token_attends_to_itself():
    q, k, v = qkv(2, 3, 1, DIM, scale=3.0)
    torch.testing.assert_close(_module()(q, k, v), v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_the_unpadded_sequences(side):
    attn = _module()
    lengths, padded = (37, 50), 50
    q, k, v = qkv(2, 2, padded, DIM, seed=3)
    mask = torch.zeros(2, padded, dtype=torch.bool)
    singles = []
    for b, n in enumerate(lengths):
        keep = slice(0, n) if side == "right" else slice(padded - n, padded)
        mask[b] = True
        mask[b, keep] = False
        singles.append((keep, attn(*(t[b : b + 1, :, keep] for t in (q, k, v)))))
    # Garbage in the padded slots must neither contribute nor move the proposals.
    q, k = (t.masked_fill(mask[:, None, :, None], 1e4) for t in (q, k))
    v = v.masked_fill(mask[:, None, :, None], 1e6)
    batched = attn(q, k, v, key_padding_mask=mask)
    for b, (keep, single) in enumerate(singles):
        torch.testing.assert_close(batched[b : b + 1, :, keep], single, rtol=1e-5, atol=1e-6)


def test_fully_padded_sequence_gives_zeros_not_nan():
    q, k, v = qkv(2, 2, 6, DIM)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1] = True
    out = _module()(q, k, v, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_eval_is_deterministic_draws_nothing_and_noise_is_a_saved_buffer():
    attn = _module(seed=5)
    q, k, v = qkv(2, 2, 9, DIM)
    torch.manual_seed(0)
    first = attn(q, k, v)
    assert torch.equal(torch.rand(3), torch.manual_seed(0) and torch.rand(3))
    assert torch.equal(attn(q, k, v), first)
    assert attn.eps.shape == (8, 2, DIM)
    assert "eps" in attn.state_dict()
    assert torch.equal(_module(seed=5).eps, attn.eps)
    assert not torch.equal(_module(seed=6).eps, attn.eps)
    rebuilt = LaraAttention(**attn.config()).eval()
    rebuilt.load_state_dict(attn.state_dict())
    assert torch.equal(rebuilt(q, k, v), first)
    assert "num_proposals=8" in repr(attn)


def test_training_draws_fresh_noise_for_the_same_estimator():
    attn = _module().double().train()
    q, k, v = (t.double() for t in qkv(2, 3, 11, DIM, dim_value=8, seed=2))
    assert not torch.equal(attn(q, k, v), attn(q, k, v))
    torch.manual_seed(7)
    out = attn(q, k, v)
    torch.manual_seed(7)
    noise = torch.randn(2, 3, 8, 2, DIM, dtype=torch.float64)
    torch.testing.assert_close(out, lara_reference(q, k, v, noise), rtol=1e-10, atol=1e-10)


def test_large_norms_stay_finite_and_float32_matches_float64():
    attn = _module(64, dim=64)
    q, k, v = qkv(2, 2, 300, 64, scale=3.0, seed=1)  # |q|^2 / sqrt(D) about 72
    out = attn(q, k, v)
    assert torch.isfinite(out).all()
    # Stabilization loses no precision: float32 agrees with the same estimator in float64.
    assert rel_rms_error(out, attn(q.double(), k.double(), v.double())) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_is_finite_and_close_to_float32(dtype):
    attn = _module(64, dim=64)
    q, k, v = (t.to(dtype) for t in qkv(1, 2, 300, 64, scale=3.0, seed=1))
    v = v * 100.0
    out = attn(q, k, v)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # Inside, everything runs in fp32, so only the output's rounding differs.
    assert rel_rms_error(out, attn(q.float(), k.float(), v.float())) < 1e-2


def test_gradcheck():
    attn = _module(6, num_proposals=3, dim=4).double()
    q, k, v = (t.double().requires_grad_() for t in qkv(1, 2, 7, 4, dim_value=3))
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v), (q, k, v))


def test_causal_is_not_implemented():
    with pytest.raises(NotImplementedError, match="bidirectional only"):
        LaraAttention(DIM, causal=True)


BAD_CONSTRUCTION = {
    "dim_head-float": (dict(dim_head=16.0), "dim_head"),
    "nb_features<1": (dict(dim_head=16, nb_features=0), "nb_features"),
    "num_proposals<1": (dict(dim_head=16, num_proposals=0), "num_proposals"),
    "nb_features-not-multiple": (
        dict(dim_head=16, nb_features=20, num_proposals=8),
        "nb_features=20 must be a multiple of num_proposals=8",
    ),
}


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_CONSTRUCTION.values(), ids=BAD_CONSTRUCTION.keys()
)
def test_bad_construction_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaraAttention(**kwargs)


def _bad_calls():
    q, k, v = qkv(2, 3, 10, DIM, dim_value=8)
    return {
        "q-rank-3": ((q[0], k, v), {}, r"q must have rank 4 \(B, H, N, D\)"),
        "k-wrong-dim": ((q, k[..., :8], v), {}, "k last dim must be dim_head=16"),
        "v-wrong-length": ((q, k, v[:, :, :9]), {}, "v must have shape"),
        "cross-attention": ((q[:, :, :4], k, v), {}, "Nq=4 and Nk=10"),
        "mixed-dtypes": ((q.double(), k, v), {}, "share one dtype"),
        "mask-shape": (
            (q, k, v),
            {"key_padding_mask": torch.zeros(2, 9, dtype=torch.bool)},
            r"key_padding_mask must have shape \(B, Nk\) = \(2, 10\)",
        ),
        "mask-dtype": (
            (q, k, v),
            {"key_padding_mask": torch.zeros(2, 10)},
            "key_padding_mask must be a bool tensor",
        ),
    }


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_call_is_a_value_error_naming_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module()(*args, **kwargs)


class MaskedAttention(nn.Module):
    """The mask as a plain positional input, as the exporters wire it."""

    def __init__(self, attn: LaraAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, q, k, v, mask):
        return self.attn(q, k, v, key_padding_mask=mask)


def _export_inputs(batch: int, length: int) -> dict[str, torch.Tensor]:
    q, k, v = qkv(batch, 2, length, DIM, dim_value=12, seed=length)
    return {"q": q, "k": k, "v": v, "mask": _ragged_mask(batch, length)}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_matches_torch_at_every_length_and_batch(exporter, tmp_path):
    module = MaskedAttention(_module(16, num_proposals=4)).eval()
    example = _export_inputs(2, 13)
    dynamic = {name: {0: "batch", 2: "seq"} for name in ("q", "k", "v")}
    path = tmp_path / "lara.onnx"
    session = export_onnx(
        module,
        tuple(example.values()),
        path,
        input_names=list(example),
        output_names=["out"],
        dynamic=dynamic | {"mask": {0: "batch", 1: "seq"}},
        exporter=exporter,
    )
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert not FORBIDDEN_OPS & {node.op_type for node in model.graph.node}
    for batch, length in [(1, 1), (3, 7), (2, 33), (2, 100)]:
        inputs = _export_inputs(batch, length)
        with torch.no_grad():
            expected = module(*inputs.values()).numpy()
        (got,) = run_onnx(session, **inputs)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
