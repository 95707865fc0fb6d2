"""The attention benchmark's methods: one :class:`Method` per row of its table.

A method says how to build one call on ``(B, H, n, D)`` inputs, how many matrix-product FLOPs
that call does, which SDPA row its speedup divides, and why it may not run somewhere. Adding a
method is adding one object to :data:`METHODS`. The FLOP formulas are in
:mod:`benchmarks.attention`'s docstring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from favor.exporter import export
from favor.ops import FavorAttention

GIB = 2**30
FP32_BYTES = 4
# Value of torch's SDPBackend enum for the plain math path, the one that builds the n x n matrix.
SDPA_MATH_BACKEND = 0
# The exported graphs an ORT method runs: favor-export's default and its --fused-attention one.
PORTABLE, FUSED = "portable", "fused"

Call = Callable[[], object]
Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """Shape of one attention call; ``M`` is ``features`` and ``C`` is ``chunk_size``."""

    batch: int
    heads: int
    dim_head: int
    features: int
    chunk_size: int


@dataclass(frozen=True)
class Limits:
    """Where cases stop being worth running: SDPA's length cap and the memory caps."""

    sdpa_max_length: int
    sdpa_limit_gib: float
    cumsum_limit_gib: float


@dataclass(frozen=True)
class Method:
    """One way of computing attention, timed as one table row per length.

    ``build(method, cfg, (q, k, v), graph)`` returns the no-argument call to time; the inputs
    are ``(B, H, n, D)`` float32 on the CPU, and ``graph`` is the exported ONNX file for
    methods with a ``graph`` kind (None otherwise). ``flops_per_head(n, cfg)`` counts one
    head's matrix products. ``baseline`` names the SDPA method that this one's speedup divides
    (same causality, same device). ``guard(method, n, cfg, limits)`` says why a case would not
    be worth running, or None.
    """

    name: str
    label: str
    causal: bool
    build: Callable[[Method, Config, Tensors, str | None], Call]
    flops_per_head: Callable[[int, Config], int]
    baseline: str | None = None
    device: str = "cpu"
    graph: str | None = None
    guard: Callable[[Method, int, Config, Limits], str | None] | None = None

    def flops(self, n: int, cfg: Config) -> float:
        """Matrix-product FLOPs of one call, for all ``B * H`` heads."""
        return float(self.flops_per_head(n, cfg) * cfg.batch * cfg.heads)

    def unavailable(self) -> str | None:
        """Why this method cannot run on this machine at all, or None."""
        if self.device == "cuda" and not torch.cuda.is_available():
            return "skipped (no CUDA device)"
        if self.device == "cuda" and self.graph and not ort_cuda_available():
            return "skipped (onnxruntime has no CUDAExecutionProvider)"
        return None

    def skip_reason(self, n: int, cfg: Config, limits: Limits) -> str | None:
        """Why the case at length ``n`` is not run, or None."""
        reason = self.unavailable()
        if reason is None and self.guard is not None:
            reason = self.guard(self, n, cfg, limits)
        return reason


# ---------------------------------------------------------------------------------------------
# FLOP counts, per head
# ---------------------------------------------------------------------------------------------


def linear_flops(n: int, cfg: Config) -> int:
    """Feature maps of queries and keys, ``phi_k^T V`` and ``phi_q S`` (ones column included)."""
    d, dv, m = cfg.dim_head, cfg.dim_head, cfg.features
    return 2 * (2 * n * m * d) + 2 * (2 * n * m * (dv + 1))


def chunked_flops(n: int, cfg: Config) -> int:
    """:func:`linear_flops` plus the intra-chunk ``phi_q phi_k^T`` and masked scores times V."""
    c, dv, m = cfg.chunk_size, cfg.dim_head, cfg.features
    return linear_flops(n, cfg) + 2 * n * c * m + 2 * n * c * (dv + 1)


def sdpa_flops(n: int, cfg: Config) -> int:
    """``Q K^T`` and ``P V``."""
    return 4 * n * n * cfg.dim_head


def causal_sdpa_flops(n: int, cfg: Config) -> int:
    """Half of :func:`sdpa_flops`: the masked half is not computed."""
    return 2 * n * n * cfg.dim_head


# ---------------------------------------------------------------------------------------------
# Guards
# ---------------------------------------------------------------------------------------------


def ort_cuda_available() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def sdpa_backend(cfg: Config, causal: bool, device: str = "cpu") -> int:
    """Backend torch would pick for these shapes (an ``SDPBackend`` value); math if unknown.

    The choice depends on dtype, device and head size, not on the length, so small inputs stand
    in for the real ones. ``_fused_sdp_choice`` is private; if it disappears, assume the worst.
    """
    probe = torch.zeros(cfg.batch, cfg.heads, 8, cfg.dim_head, device=device)
    try:
        return int(torch._fused_sdp_choice(probe, probe, probe, is_causal=causal))
    except (AttributeError, RuntimeError):
        return SDPA_MATH_BACKEND


def sdpa_guard(method: Method, n: int, cfg: Config, limits: Limits) -> str | None:
    """CPU SDPA above the length cap (its O(n²) time dominates a sweep), and the math path's
    ``(B, H, N, N)`` scores where they would exhaust memory."""
    cap = limits.sdpa_max_length
    if method.device == "cpu" and cap and n > cap:
        return f"skipped (time: O(n²) SDPA above --sdpa-max-length {cap})"
    size = cfg.batch * cfg.heads * n * n * FP32_BYTES
    naive = sdpa_backend(cfg, method.causal, method.device) == SDPA_MATH_BACKEND
    if naive and size > limits.sdpa_limit_gib * GIB:
        return f"skipped (memory: math SDPA would build {size / GIB:.0f} GiB of scores)"
    return None


def cumsum_guard(method: Method, n: int, cfg: Config, limits: Limits) -> str | None:
    """The textbook form's ``(B, H, N, M, Dv)`` prefix sums where they would exhaust memory."""
    size = cfg.batch * cfg.heads * n * cfg.features * cfg.dim_head * FP32_BYTES
    if size > limits.cumsum_limit_gib * GIB:
        return f"skipped (memory: (B,H,N,M,Dv) prefix sums are {size / GIB:.0f} GiB)"
    return None


# ---------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------


def favor_module(causal: bool, cfg: Config) -> FavorAttention:
    """The module a FAVOR method runs (or exports); seed 0, so eager and ORT share weights."""
    return FavorAttention(
        cfg.dim_head, cfg.features, causal=causal, chunk_size=cfg.chunk_size
    ).eval()


def on_device(method: Method, qkv: Tensors) -> Tensors:
    """The inputs on the method's device."""
    q, k, v = (x.to(method.device) for x in qkv)
    return q, k, v


def sdpa_call(method: Method, cfg: Config, qkv: Tensors, graph: str | None) -> Call:
    """``F.scaled_dot_product_attention`` with the method's causality."""
    q, k, v = on_device(method, qkv)
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=method.causal)


def favor_call(method: Method, cfg: Config, qkv: Tensors, graph: str | None) -> Call:
    """The FavorAttention module in PyTorch eager."""
    q, k, v = on_device(method, qkv)
    module = favor_module(method.causal, cfg).to(method.device)
    return lambda: module(q, k, v)


def traced_favor_call(method: Method, cfg: Config, qkv: Tensors, graph: str | None) -> Call:
    """The module traced with ``torch.jit.trace`` at this case's length: what a TorchScript
    deployment of it runs."""
    q, k, v = on_device(method, qkv)
    module = favor_module(method.causal, cfg).to(method.device)
    # Tracing warns about every data-dependent branch it freezes; at a fixed length they hold.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (q, k, v), check_trace=False)
    return lambda: traced(q, k, v)


def cumsum_causal(
    module: FavorAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Textbook causal linear attention: one ``M x Dv`` prefix-sum state per token.

    Inputs ``(B, H, N, D)``, values ``(B, H, N, Dv)``; output ``(B, H, N, Dv)``.
    """
    phi_q, phi_k = module.feature_maps(q, k)
    values = v.to(phi_k.dtype)
    # (B, H, N, M, Dv): the O(n M Dv) tensor the chunked form exists to avoid.
    states = torch.cumsum(phi_k[..., :, None] * values[..., None, :], dim=2)
    normalizers = torch.cumsum(phi_k, dim=2)
    numerator = (phi_q[..., None, :] @ states).squeeze(-2)
    denominator = (phi_q * normalizers).sum(dim=-1, keepdim=True)
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def cumsum_call(method: Method, cfg: Config, qkv: Tensors, graph: str | None) -> Call:
    """:func:`cumsum_causal` on the causal module's own feature maps."""
    q, k, v = on_device(method, qkv)
    module = favor_module(method.causal, cfg).to(method.device)
    return lambda: cumsum_causal(module, q, k, v)


def graph_call(method: Method, cfg: Config, qkv: Tensors, graph: str | None) -> Call:
    """A session on the exported ``graph`` with favor.runtime's session options.

    On CUDA, inputs and output are bound on the device, so a timed call is the graph itself
    rather than host-device copies.
    """
    import onnxruntime as ort

    from favor.runtime.session import session_options

    if graph is None:
        raise ValueError(f"{method.name} runs an exported graph, and none was given")
    provider = "CUDAExecutionProvider" if method.device == "cuda" else "CPUExecutionProvider"
    session = ort.InferenceSession(graph, session_options(), providers=[provider])
    if session.get_providers()[0] != provider:
        # ORT falls back to the CPU silently when the CUDA provider fails to load.
        raise RuntimeError(f"onnxruntime could not use {provider}")
    names = [i.name for i in session.get_inputs()]
    feeds = {name: x.numpy() for name, x in zip(names, qkv, strict=True)}
    if method.device == "cpu":
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    binding.bind_output(session.get_outputs()[0].name, "cuda")
    return lambda: session.run_with_iobinding(binding)


# ---------------------------------------------------------------------------------------------
# Exported graphs
# ---------------------------------------------------------------------------------------------


def graph_name(method: Method) -> str:
    """File name (without suffix) of the graph an ORT method runs; CPU and CUDA share it."""
    return (
        "favor" + ("_causal" if method.causal else "") + ("_fused" if method.graph == FUSED else "")
    )


def input_declarations(cfg: Config) -> list[str]:
    """favor-export's ``--input`` declarations of q, k, v: batch and length dynamic.

    The example length spans two full chunks and a partial one, so the trace takes the chunk
    padding path that most lengths need.
    """
    example = 2 * cfg.chunk_size + 3
    return [f"{name}:batch,{cfg.heads},seq={example},{cfg.dim_head}:float32" for name in "qkv"]


def export_graph(method: Method, cfg: Config, out_dir: Path) -> Path:
    """Export the module an ORT method runs through favor.exporter, as favor-export writes it.

    Writes ``NAME.onnx`` and ``NAME.manifest.json`` into ``out_dir``; the graph is the one
    users get, the exporter's post-processing included. Not validated: parity is the
    exporter's tests' job, speed is this benchmark's.
    """
    result = export(
        favor_module(method.causal, cfg),
        out_dir,
        name=graph_name(method),
        formats="onnx",
        inputs=input_declarations(cfg),
        validate_outputs=False,
        fused_attention=method.graph == FUSED,
    )
    if result.onnx_path is None:
        raise RuntimeError(f"favor.exporter wrote no ONNX graph for {method.name}")
    return result.onnx_path


# ---------------------------------------------------------------------------------------------
# The registry, in the table's display order
# ---------------------------------------------------------------------------------------------


def registry(*methods: Method) -> dict[str, Method]:
    """Methods by name; a name given twice would silently hide a row."""
    by_name = {method.name: method for method in methods}
    if len(by_name) != len(methods):
        raise ValueError("two attention methods share a name")
    return by_name


METHODS = registry(
    Method("favor", "favor", causal=False, build=favor_call, flops_per_head=linear_flops,
           baseline="sdpa"),
    Method("favor_causal", "favor causal", causal=True, build=favor_call,
           flops_per_head=chunked_flops, baseline="sdpa_causal"),
    Method("favor_ort", "favor, ORT", causal=False, build=graph_call, graph=PORTABLE,
           flops_per_head=linear_flops, baseline="sdpa"),
    Method("favor_causal_ort", "favor causal, ORT", causal=True, build=graph_call,
           graph=PORTABLE, flops_per_head=chunked_flops, baseline="sdpa_causal"),
    Method("favor_causal_fused_ort", "favor causal, ORT fused", causal=True, build=graph_call,
           graph=FUSED, flops_per_head=chunked_flops, baseline="sdpa_causal"),
    Method("sdpa", "sdpa", causal=False, build=sdpa_call, flops_per_head=sdpa_flops,
           guard=sdpa_guard),
    Method("sdpa_causal", "sdpa causal", causal=True, build=sdpa_call,
           flops_per_head=causal_sdpa_flops, guard=sdpa_guard),
    # Counted like non-causal favor: its outer products and prefix sums do the arithmetic of
    # phi_k^T V, although they move far more memory.
    Method("cumsum_causal", "cumsum causal (textbook)", causal=True, build=cumsum_call,
           flops_per_head=linear_flops, baseline="sdpa_causal", guard=cumsum_guard),
    Method("sdpa_causal_cuda", "sdpa causal, CUDA", causal=True, device="cuda",
           build=sdpa_call, flops_per_head=causal_sdpa_flops, guard=sdpa_guard),
    Method("favor_causal_cuda", "favor causal, CUDA", causal=True, device="cuda",
           build=favor_call, flops_per_head=chunked_flops, baseline="sdpa_causal_cuda"),
    Method("favor_causal_jit_cuda", "favor causal, TorchScript CUDA", causal=True,
           device="cuda", build=traced_favor_call, flops_per_head=chunked_flops,
           baseline="sdpa_causal_cuda"),
    Method("favor_causal_ort_cuda", "favor causal, ORT CUDA", causal=True, device="cuda",
           build=graph_call, graph=PORTABLE, flops_per_head=chunked_flops,
           baseline="sdpa_causal_cuda"),
    Method("favor_causal_fused_ort_cuda", "favor causal, ORT CUDA fused", causal=True,
           device="cuda", build=graph_call, graph=FUSED, flops_per_head=chunked_flops,
           baseline="sdpa_causal_cuda"),
)  # fmt: skip


def available_methods() -> tuple[str, ...]:
    """Every method that can run here: the CUDA ones only with a device (and ORT provider)."""
    return tuple(name for name, method in METHODS.items() if method.unavailable() is None)
