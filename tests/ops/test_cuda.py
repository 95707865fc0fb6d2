"""CUDA parity of the ops; skipped where torch sees no CUDA device (CI has none)."""

import pytest
import torch

from favor.ops import KERNELS, FavorAttention
from favor.ops.models import PerformerLM
from tests.helpers import assert_fp32_close, qkv

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_matches_cpu(kernel, causal):
    attn = FavorAttention(32, 64, causal=causal, kernel=kernel, chunk_size=16)
    q, k, v = qkv(2, 4, 16 * 5 + 3, 32)
    expected, expected_state = attn(q, k, v, return_state=True)
    out, state = attn.cuda()(q.cuda(), k.cuda(), v.cuda(), return_state=True)
    assert_fp32_close(out.cpu(), expected, ulps=200)
    assert_fp32_close(state.cpu(), expected_state, ulps=200)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_half_precision_is_finite_at_32k(dtype):
    attn = FavorAttention(64, 128, causal=True).cuda()
    q, k, v = (t.cuda().to(dtype) for t in qkv(1, 8, 32768, 64, scale=4.0))
    assert torch.isfinite(attn(q, k, v)).all()


def test_torchscript_lm_runs_on_cuda(tmp_path):
    lm = PerformerLM(50, 32, 2, 4, nb_features=16).eval()
    tokens = torch.randint(0, 50, (2, 40))
    traced = torch.jit.trace(lm, (tokens,))
    traced.save(str(tmp_path / "lm.pt"))
    loaded = torch.jit.load(str(tmp_path / "lm.pt"), map_location="cuda")
    assert_fp32_close(loaded(tokens.cuda()).cpu(), lm(tokens), ulps=500)
