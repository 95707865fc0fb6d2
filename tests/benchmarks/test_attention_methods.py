"""The attention method registry: what the CLI accepts, FLOP counts, calls and exported graphs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import __main__ as one_command
from benchmarks.attention import parse_args
from benchmarks.attention_methods import (
    FUSED,
    METHODS,
    PORTABLE,
    Config,
    Limits,
    export_graph,
    favor_module,
)
from favor.exporter import save_checkpoint

BIN = Path(sys.executable).parent
# Small enough to export in seconds; the test length spans two chunks and a partial one.
CFG = Config(batch=2, heads=2, dim_head=16, features=16, chunk_size=8)
N = 19
NO_LIMITS = Limits(sdpa_max_length=0, sdpa_limit_gib=math.inf, cumsum_limit_gib=math.inf)
CPU_METHODS = [name for name, method in METHODS.items() if method.device == "cpu"]
CUDA_METHODS = [name for name, method in METHODS.items() if method.device == "cuda"]


def inputs(n: int = N) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (CFG.batch, CFG.heads, n, CFG.dim_head)
    q, k, v = (torch.randn(shape, generator=generator) * 0.5 for _ in range(3))
    return q, k, v


def softmax_attention(q, k, v, causal: bool) -> torch.Tensor:
    """Plain softmax attention in float64: ``(B, H, N, D)`` in, ``(B, H, N, Dv)`` out."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), -math.inf)
    return scores.softmax(-1) @ v


def linear_attention(module, q, k, v, causal: bool) -> torch.Tensor:
    """Random-feature attention written out on the module's feature maps, token by token."""
    phi_q, phi_k = (x.double() for x in module.feature_maps(q, k))
    v = v.double()
    weights = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        weights = weights.tril()
    return (weights @ v) / weights.sum(-1, keepdim=True)


def test_the_cli_accepts_every_registered_method_and_nothing_else():
    assert parse_args(["--methods", ",".join(reversed(METHODS))]).methods == tuple(METHODS)
    with pytest.raises(SystemExit):
        parse_args(["--methods", "favor,no_such_method"])


def test_the_one_command_benchmark_runs_registered_methods_only():
    argv = one_command.attention_argv(one_command.parse_args(["--quick"]))
    methods = argv[argv.index("--methods") + 1].split(",")
    assert methods and set(methods) <= set(METHODS)
    assert not set(one_command.LEFT_OUT_METHODS) & set(methods)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_speedup_divides_sdpa_of_the_same_causality_on_the_same_device(name):
    method = METHODS[name]
    if name.startswith("sdpa"):
        assert method.baseline is None
        return
    baseline = METHODS[method.baseline]
    assert baseline.build is METHODS["sdpa"].build
    assert (baseline.causal, baseline.device) == (method.causal, method.device)
    assert method.graph in (None, PORTABLE, FUSED)


# B = 2, H = 3 heads, D = Dv = 2, M = 3 features, chunk C = 2, n = 4 tokens. Per head:
#   feature maps 2 x (2 n M D) = 96; phi_k^T V and phi_q S, each 2 n M (Dv + 1) = 72: 240;
#   chunked causal adds 2 n C M = 48 and 2 n C (Dv + 1) = 48: 336;
#   SDPA 4 n² D = 128, causal 2 n² D = 64. Times B H = 6.
HAND_FLOPS = {"favor": 1440, "favor_causal": 2016, "sdpa": 768, "sdpa_causal": 384}
HAND_FLOPS["cumsum_causal"] = HAND_FLOPS["favor"]  # the arithmetic of phi_k^T V


@pytest.mark.parametrize("name", list(METHODS))
def test_flops_match_a_hand_count(name):
    method = METHODS[name]
    counted = "sdpa" if name.startswith("sdpa") else "favor"
    counted += "_causal" if method.causal else ""
    if name == "cumsum_causal":
        counted = name
    cfg = Config(batch=2, heads=3, dim_head=2, features=3, chunk_size=2)
    assert method.flops(4, cfg) == HAND_FLOPS[counted]


def test_cases_that_would_exhaust_memory_or_time_are_skipped():
    assert "memory" in METHODS["cumsum_causal"].skip_reason(
        4096, CFG, Limits(sdpa_max_length=0, sdpa_limit_gib=1.0, cumsum_limit_gib=0.001)
    )
    capped = Limits(sdpa_max_length=1024, sdpa_limit_gib=math.inf, cumsum_limit_gib=math.inf)
    assert "time" in METHODS["sdpa_causal"].skip_reason(2048, CFG, capped)
    assert METHODS["sdpa_causal"].skip_reason(1024, CFG, capped) is None
    assert METHODS["favor_causal"].skip_reason(10**6, CFG, capped) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("name", CUDA_METHODS)
def test_cuda_methods_say_why_they_cannot_run(name):
    assert METHODS[name].skip_reason(512, CFG, NO_LIMITS).startswith("skipped (")


@pytest.mark.parametrize("name", ["sdpa", "sdpa_causal", "favor", "favor_causal", "cumsum_causal"])
def test_eager_calls_compute_attention(name):
    method = METHODS[name]
    q, k, v = inputs()
    out = method.build(method, CFG, (q, k, v), None)()
    if name.startswith("sdpa"):
        expected = softmax_attention(q, k, v, method.causal)
    else:
        expected = linear_attention(favor_module(method.causal, CFG), q, k, v, method.causal)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The graph file of each CPU ORT method, as the sweep exports it."""
    out = tmp_path_factory.mktemp("graphs")
    return {
        name: export_graph(METHODS[name], CFG, out)
        for name in CPU_METHODS
        if METHODS[name].graph is not None
    }


def test_the_benchmarked_graph_is_what_favor_export_writes(graphs, tmp_path):
    checkpoint = save_checkpoint(favor_module(True, CFG), tmp_path / "attention.pt")
    # Declared as a user would: batch and length dynamic, heads and head size fixed.
    declarations = [f"{name}:batch,2,seq=19,16:float32" for name in "qkv"]
    done = subprocess.run(
        [BIN / "favor-export", checkpoint, "-o", tmp_path / "cli", "--name", "attention",
         "--format", "onnx", "--no-validate", "-q",
         *(arg for d in declarations for arg in ("--input", d))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "cli" / "attention.onnx").read_bytes()
    assert graphs["favor_causal_ort"].read_bytes() == written


@pytest.mark.parametrize("name", ["favor_ort", "favor_causal_ort", "favor_causal_fused_ort"])
def test_graph_calls_compute_what_the_module_does(graphs, name):
    method = METHODS[name]
    q, k, v = inputs(n=2 * N)  # another length than the traced one: the length is dynamic
    (out,) = method.build(method, CFG, (q, k, v), str(graphs[name]))()
    expected = favor_module(method.causal, CFG)(q, k, v)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CUDA_METHODS)
def test_cuda_calls_compute_what_their_cpu_counterparts_do(name, tmp_path):
    method = METHODS[name]
    if method.skip_reason(N, CFG, NO_LIMITS):
        pytest.skip(method.skip_reason(N, CFG, NO_LIMITS))
    graph = str(export_graph(method, CFG, tmp_path)) if method.graph else None
    q, k, v = inputs()
    out = method.build(method, CFG, (q, k, v), graph)()
    if method.graph:
        # ORT's outputs stay bound on the device; that the bound call runs is the check.
        return
    cpu = METHODS["sdpa_causal" if name.startswith("sdpa") else "favor_causal"]
    expected = cpu.build(cpu, CFG, (q, k, v), None)()
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-3, atol=1e-4)
