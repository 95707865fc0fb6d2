"""FavorAttention: agreement with the textbook reference and SDPA, state, leaks, padding, dtypes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from favor.ops import KERNELS, PROJECTIONS, FavorAttention
from favor.ops.reference import favor_attention_reference
from tests.helpers import assert_estimates_close, assert_fp32_close, qkv, rel_rms_error

CHUNK = 16
LENGTHS = {"1": 1, "C-1": CHUNK - 1, "C": CHUNK, "C+1": CHUNK + 1, "5C+3": 5 * CHUNK + 3}
CAUSAL = {"causal": True, "bidirectional": False}


def _module(kernel="posrf", *, causal=True, nb_features=32, dim=16, **kwargs):
    return FavorAttention(
        dim, nb_features, causal=causal, kernel=kernel, chunk_size=CHUNK, **kwargs
    )


@pytest.mark.parametrize("causal", CAUSAL.values(), ids=CAUSAL.keys())
@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("projection", ["orf", "sgq"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_textbook_reference(kernel, projection, length, causal):
    attn = _module(kernel, causal=causal, projection=projection)
    # Calibrated on other data with unequal query and key norms, so the parametric kernels have
    # parameters well away from PosRF's (a != 0, psi != 1).
    cal_q, cal_k, _ = qkv(2, 3, 40, 16, seed=9)
    attn.calibrate_(cal_q * 0.5, cal_k * 1.5)
    exact = copy.deepcopy(attn).double()
    a, psi = exact.kernel_parameters()
    q, k, v = qkv(2, 3, length, 16, dim_value=8, dtype=torch.float64)
    expected = favor_attention_reference(
        q, k, v, exact.projection_matrix, kernel, causal=causal, a=a, psi=psi,
        feature_weights=exact.feature_weights,
    )  # fmt: skip
    # In float64 the stabilized fast path is the textbook estimator up to rounding.
    torch.testing.assert_close(exact(q, k, v), expected, rtol=1e-9, atol=1e-9)
    # In float32, within the export parity budget. Sparse-grid weights with a far from 0 (OPRF,
    # GERF calibrated on other data) can put the denominator next to zero, with outputs of ~70
    # where softmax gives ~1: rounding is amplified without bound there, so those cases rest on
    # the float64 check above.
    if projection == "sgq" and kernel in ("oprf", "gerf"):
        return
    assert_estimates_close(
        attn(q.float(), k.float(), v.float()).double(), expected,
        signed=attn.denominator_floor() is not None, rtol=1e-4, atol=1e-4,
    )  # fmt: skip


@pytest.mark.parametrize("causal", CAUSAL.values(), ids=CAUSAL.keys())
@pytest.mark.parametrize("kernel", ["posrf", "hyperbolic", "trigrf"])
def test_approximates_sdpa_with_many_features(kernel, causal):
    q, k, v = qkv(1, 2, 64, 16, scale=0.5)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    error = rel_rms_error(FavorAttention(16, 4096, causal=causal, kernel=kernel)(q, k, v), exact)
    assert error < 0.05, error


@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_state_continues_across_chunks_of_any_length(kernel):
    attn = _module(kernel)
    q, k, v = qkv(2, 3, 70, 16)
    whole, whole_state = attn(q, k, v, return_state=True)
    pieces, state = [], None
    for start, stop in [(0, 1), (1, 17), (17, 18), (18, 51), (51, 70)]:
        out, state = attn(
            q[:, :, start:stop],
            k[:, :, start:stop],
            v[:, :, start:stop],
            state=state,
            return_state=True,
        )
        pieces.append(out)
    assert_fp32_close(torch.cat(pieces, dim=2), whole)
    assert_fp32_close(state, whole_state)


@pytest.mark.parametrize("kernel", KERNELS)
def test_step_matches_forward(kernel):
    attn = _module(kernel)
    q, k, v = qkv(2, 3, 20, 16)
    prefix, state = attn(q[:, :, :5], k[:, :, :5], v[:, :, :5], return_state=True)
    outs = [prefix]
    for t in range(5, 20):
        out, state = attn.step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        outs.append(out.unsqueeze(2))
    assert_fp32_close(torch.cat(outs, dim=2), attn(q, k, v))


def test_state_size_does_not_depend_on_length():
    attn = _module()
    shapes = {attn(*qkv(1, 2, n, 16), return_state=True)[1].shape for n in (1, 15, 400)}
    assert shapes == {(1, 2, attn.feature_dim, 17)}


def test_bidirectional_state_stands_for_earlier_keys():
    attn = _module(causal=False)
    q, k, v = qkv(2, 3, 30, 16)
    _, state = attn(q[:, :, :1], k[:, :, :12], v[:, :, :12], return_state=True)
    torch.testing.assert_close(attn(q, k[:, :, 12:], v[:, :, 12:], state=state), attn(q, k, v))


@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_output_never_depends_on_later_tokens(kernel, projection):
    attn = _module(kernel, nb_features=64, projection=projection)
    q, k, v = qkv(2, 2, 5 * CHUNK + 3, 16)
    for t in (0, CHUNK - 2, 2 * CHUNK, 5 * CHUNK + 1):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        # Later tokens far larger in norm: a shared max over the sequence or the chunk would push
        # the earlier features into underflow and change the earlier outputs.
        q2[:, :, t + 1 :] *= 40.0
        k2[:, :, t + 1 :] = torch.randn_like(k2[:, :, t + 1 :]) * 40.0
        v2[:, :, t + 1 :] = torch.randn_like(v2[:, :, t + 1 :]) * 1e3
        before, after = attn(q, k, v)[:, :, : t + 1], attn(q2, k2, v2)[:, :, : t + 1]
        torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("causal", CAUSAL.values(), ids=CAUSAL.keys())
@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_padding_keys_contribute_nothing(kernel, projection, causal, side):
    attn = _module(kernel, causal=causal, projection=projection)
    lengths, padded = (37, 50), 50
    q, k, v = qkv(2, 2, padded, 16, seed=3)
    mask = torch.zeros(2, padded, dtype=torch.bool)
    singles = []
    for b, n in enumerate(lengths):
        keep = slice(0, n) if side == "right" else slice(padded - n, padded)
        mask[b] = True
        mask[b, keep] = False
        singles.append(
            (keep, attn(q[b : b + 1, :, keep], k[b : b + 1, :, keep], v[b : b + 1, :, keep]))
        )
    # Garbage in the padded slots must not matter.
    k = k.masked_fill(mask[:, None, :, None], 1e4)
    v = v.masked_fill(mask[:, None, :, None], float("1e6"))
    batched = attn(q, k, v, key_padding_mask=mask)
    signed = attn.denominator_floor() is not None
    for b, (keep, single) in enumerate(singles):
        assert_estimates_close(
            batched[b : b + 1, :, keep], single, signed=signed, rtol=1e-5, atol=1e-6
        )


@pytest.mark.slow
@pytest.mark.parametrize("causal", CAUSAL.values(), ids=CAUSAL.keys())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_half_precision_is_finite_and_close_at_32k_with_large_norms(kernel, dtype, causal):
    attn = FavorAttention(64, 64, causal=causal, kernel=kernel)
    q, k, v = qkv(
        1, 1, 32768, 64, scale=4.0, seed=1
    )  # |q|, |k| about 32: far past fp16's exp range
    v = v * 100.0
    out = attn(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # Inside, features and sums run in fp32, so half inputs differ from fp32 ones by input rounding.
    full = attn(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float())
    # TrigRF's estimate can exceed fp16's range, where the half result saturates.
    full = full.clamp(torch.finfo(dtype).min, torch.finfo(dtype).max)
    assert rel_rms_error(out, full) < 1e-2


@pytest.mark.parametrize("causal", CAUSAL.values(), ids=CAUSAL.keys())
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck(kernel, causal):
    attn = FavorAttention(4, 6, causal=causal, kernel=kernel, chunk_size=3).double()
    q, k, v = (t.double().requires_grad_() for t in qkv(1, 2, 7, 4, dim_value=3))
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v), (q, k, v))


def test_projection_is_a_saved_buffer_and_redraw_changes_it():
    attn = _module(seed=5)
    before = attn.projection_matrix.clone()
    assert "projection_matrix" in attn.state_dict()
    assert torch.equal(_module(seed=5).projection_matrix, before)
    attn.redraw_(seed=6)
    assert attn.seed == 6 and not torch.equal(attn.projection_matrix, before)
    torch.manual_seed(0)
    first = attn.redraw_()
    torch.manual_seed(0)
    assert attn.redraw_() == first
    rebuilt = FavorAttention(**attn.config())
    rebuilt.load_state_dict(attn.state_dict())
    q, k, v = qkv(1, 2, 9, 16)
    torch.testing.assert_close(rebuilt(q, k, v), attn(q, k, v))


def test_forward_draws_no_random_numbers():
    attn = _module()
    q, k, v = qkv(1, 2, 9, 16)
    torch.manual_seed(0)
    attn(q, k, v)
    assert torch.equal(torch.rand(3), torch.manual_seed(0) and torch.rand(3))


BAD_CONSTRUCTION = {
    "nb_features<1": (dict(dim_head=16, nb_features=0), "nb_features"),
    "dim_head-float": (dict(dim_head=16.0), "dim_head"),
    "chunk_size<1": (dict(dim_head=16, chunk_size=0), "chunk_size"),
    "unknown-kernel": (dict(dim_head=16, kernel="softmax"), "kernel must be one of"),
    "unknown-projection": (dict(dim_head=16, projection="sobol"), "projection must be one of"),
}


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_CONSTRUCTION.values(), ids=BAD_CONSTRUCTION.keys()
)
def test_bad_construction_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FavorAttention(**kwargs)


def _bad_calls():
    q, k, v = qkv(2, 3, 10, 16, dim_value=8)
    good_state = torch.zeros(2, 3, 32, 9)
    return {
        "q-rank-3": ((q[0], k, v), {}, r"q must have rank 4 \(B, H, N, D\)"),
        "k-wrong-dim": ((q, k[..., :8], v), {}, "k last dim must be dim_head=16"),
        "v-wrong-length": ((q, k, v[:, :, :9]), {}, "v must have shape"),
        "heads-mismatch": ((q[:, :2], k, v), {}, r"q and k must agree on \(B, H\)"),
        "causal-lengths": ((q[:, :, :4], k, v), {}, "causal attention needs q and k of one length"),
        "mixed-dtypes": ((q.double(), k, v), {}, "share one dtype"),
        "integer-input": ((q.long(), k.long(), v.long()), {}, "floating-point"),
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
        "state-other-config": (
            (q, k, v),
            {"state": torch.zeros(2, 3, 64, 9)},
            r"state must have shape .* = \(2, 3, 32, 9\)",
        ),
        "state-other-batch": ((q, k, v), {"state": good_state[:1]}, "state must have shape"),
    }


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_call_is_a_value_error_naming_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module()(*args, **kwargs)


def test_step_rejects_bidirectional_modules_and_wrong_ranks():
    q, k, v = qkv(2, 3, 1, 16)
    with pytest.raises(ValueError, match="causal=True"):
        _module(causal=False).step(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    with pytest.raises(ValueError, match=r"rank 3 \(B, H, D\)"):
        _module().step(q, k, v)
