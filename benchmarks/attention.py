"""Latency, peak memory and FLOP efficiency of FAVOR+ attention against torch's SDPA on CPU.

Run from the repository root::

    python -m benchmarks.attention            # full sweep, n = 512 ... 32768
    python -m benchmarks.attention --quick    # n = 512, 1024, 2048
    python -m benchmarks.attention --lengths 4096,65536 --methods favor_causal_ort,sdpa_causal

Methods, all fp32 on CPU under ``torch.inference_mode()`` with torch's default thread count:

* ``favor``: ``FavorAttention(D, M, causal=False)``, non-causal linear attention.
* ``favor causal``: ``FavorAttention(D, M, causal=True)``, chunked prefix sums (``C`` tokens).
* ``favor, ORT`` / ``favor causal, ORT``: the same modules exported once with the dynamo exporter
  (opset 17, dynamic batch and length) and run in an ONNX Runtime CPU session with
  ``favor.runtime``'s session options (full graph optimization, no memory pattern). This is the
  path deployed models take.
* ``favor causal, ORT fused``: the causal module exported as ``favor-export --fused-attention``
  writes it, the contraction as one ``com.microsoft.LinearAttention`` node (same session options).
* ``sdpa`` / ``sdpa causal``: ``F.scaled_dot_product_attention(q, k, v, is_causal=...)``.
* ``cumsum causal``: the textbook causal form, a per-token prefix sum of ``phi(k) v^T`` with shape
  ``(B, H, N, M, Dv)``, on the module's own ``feature_maps``. It is O(N M Dv) in memory, which is
  what chunking avoids, so it is skipped where that tensor would exceed ``--cumsum-limit-gib``.
* GPU rows, included by default only where they can run: ``sdpa causal, CUDA``, ``favor causal,
  CUDA`` (eager), ``favor causal, TorchScript CUDA`` (``torch.jit.trace`` of the module at each
  length) and ``favor causal, ORT CUDA`` (the exported causal graph on ONNX Runtime's CUDA
  provider, inputs and output bound on the device). Each timed call ends with a device
  synchronization; peak memory is torch's allocator high-water mark (not visible for ORT's own
  allocator, so blank there). Their speedup is against ``sdpa causal, CUDA``.

Every case runs in a fresh subprocess (this module with a hidden ``--case`` flag), so one case's
allocations cannot inflate the next one's peak. Timing: one warm-up call, then repeated calls until
at least ``--min-runs`` calls and ``--budget`` seconds have passed; the median is reported. Cases
whose warm-up call is slow get fewer runs so that no case spends much more than
``--max-case-seconds`` on measured calls.

The machine may be shared. Each case records how many cores other processes (and hypervisor
steal) used while it ran, from ``/proc/stat``; before a case the parent waits briefly for quiet,
and a disturbed short case is run again, at once and after the sweep, keeping the least disturbed
attempt. The table shows that load, so inflated times are visible.

Peak memory: after the inputs exist and the module is built, the kernel's RSS high-water mark is
reset (``/proc/self/clear_refs``) and the current RSS is taken as the baseline. The figure is
``ru_maxrss`` after the timed calls minus that baseline: the attention's own working memory,
output included. Linux only (``ru_maxrss`` is in KiB there).

FLOP counts, per head (multiply by ``B * H``), counting the multiply-adds of matrix products as 2
and ignoring element-wise work (exp, norms, division, masking, the chunk-level cumsum). ``n`` is the
sequence length, ``D`` the query/key head size, ``Dv`` the value head size (``= D`` here), ``M``
the number of features and ``C`` the chunk size. The ``Dv + 1`` comes from the ones column that
carries the denominator through the same products.

* feature maps, both methods: ``2 n M D`` for the queries plus ``2 n M D`` for the keys.
* ``favor``: feature maps + ``2 n M (Dv + 1)`` for ``phi_k^T V`` + ``2 n M (Dv + 1)`` for
  ``phi_q S``.
* ``favor causal``: as ``favor`` (the per-chunk summaries and the ``phi_q @ prefix`` products have
  the same size) + ``2 n C M`` for the intra-chunk ``phi_q phi_k^T`` + ``2 n C (Dv + 1)`` for the
  masked scores times values. Half of each intra-chunk product is masked away but still computed,
  so it is counted. DESIGN.md's planning figure of ``8 n M D`` leaves out the intra-chunk terms;
  with ``M = 128, D = 64, C = 64`` the honest count is about 1.4x that figure.
* ``cumsum causal``: counted like ``favor`` (the outer products and prefix sums do ``2 n M Dv``
  arithmetic, the same as ``phi_k^T V``), although it moves far more memory.
* ``sdpa``: ``4 n^2 D`` (``Q K^T`` and ``P V``); ``sdpa causal``: half of that, ``2 n^2 D``.

Achieved GFLOP/s is FLOPs / median time; "% of matmul" divides it by the same run's fp32
``torch.matmul`` rate on square ``--matmul-size`` matrices (``2 s^3`` FLOPs).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_model, machine_info
from favor.exporter.linear_attention import translation_table
from favor.exporter.onnx_graph import quiet_torch_exporters
from favor.ops import FavorAttention
from favor.ops.fused import fused_causal_attention

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (512, 1024, 2048)
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
GIB = 2**30
FP32_BYTES = 4

# Display order; the keys double as the ``--case`` method names.
METHODS = (
    "favor",
    "favor_causal",
    "favor_ort",
    "favor_causal_ort",
    "favor_causal_fused_ort",
    "sdpa",
    "sdpa_causal",
    "cumsum_causal",
    "sdpa_causal_cuda",
    "favor_causal_cuda",
    "favor_causal_jit_cuda",
    "favor_causal_ort_cuda",
    "favor_causal_fused_ort_cuda",
)
# CUDA methods and the CPU method whose computation (and FLOP count) each repeats.
GPU_METHODS = {
    "sdpa_causal_cuda": "sdpa_causal",
    "favor_causal_cuda": "favor_causal",
    "favor_causal_jit_cuda": "favor_causal",
    "favor_causal_ort_cuda": "favor_causal",
    "favor_causal_fused_ort_cuda": "favor_causal",
}
LABELS = {
    "favor": "favor",
    "favor_causal": "favor causal",
    "favor_ort": "favor, ORT",
    "favor_causal_ort": "favor causal, ORT",
    "favor_causal_fused_ort": "favor causal, ORT fused",
    "sdpa": "sdpa",
    "sdpa_causal": "sdpa causal",
    "cumsum_causal": "cumsum causal (textbook)",
    "sdpa_causal_cuda": "sdpa causal, CUDA",
    "favor_causal_cuda": "favor causal, CUDA",
    "favor_causal_jit_cuda": "favor causal, TorchScript CUDA",
    "favor_causal_ort_cuda": "favor causal, ORT CUDA",
    "favor_causal_fused_ort_cuda": "favor causal, ORT CUDA fused",
}
CAUSAL = {
    "favor": False,
    "favor_causal": True,
    "favor_ort": False,
    "favor_causal_ort": True,
    "favor_causal_fused_ort": True,
    "sdpa": False,
    "sdpa_causal": True,
    "cumsum_causal": True,
    **dict.fromkeys(GPU_METHODS, True),
}
# Methods that run the exported graph in ONNX Runtime, and the eager method they export.
ORT_METHODS = {
    "favor_ort": "favor",
    "favor_causal_ort": "favor_causal",
    "favor_causal_ort_cuda": "favor_causal",
    "favor_causal_fused_ort": "favor_causal",
    "favor_causal_fused_ort_cuda": "favor_causal",
}
# ORT methods whose graph has the fused LinearAttention node (favor-export --fused-attention).
FUSED_METHODS = ("favor_causal_fused_ort", "favor_causal_fused_ort_cuda")
GRAPH_OPSET = 17
# Disturbed cases whose measured calls took longer than this are not retried.
RETRY_MAX_CASE_S = 10.0
# Seconds to wait for other processes to go quiet before each matmul reference.
MATMUL_QUIET_WAIT_S = 60.0
# Value of torch's SDPBackend enum for the plain math path, the one that builds the n x n matrix.
SDPA_MATH_BACKEND = 0


@dataclass(frozen=True)
class Config:
    """Shape of one attention call; ``M`` is ``features`` and ``C`` is ``chunk_size``."""

    batch: int
    heads: int
    dim_head: int
    features: int
    chunk_size: int


@dataclass(frozen=True)
class Timing:
    """Budget for timing one case: seconds, minimum runs, and the cap for slow cases."""

    budget_s: float
    min_runs: int
    max_case_s: float


# ---------------------------------------------------------------------------------------------
# FLOP counts and memory guards
# ---------------------------------------------------------------------------------------------


def flops(method: str, n: int, cfg: Config) -> float:
    """Matrix-product FLOPs of one call, for all ``B * H`` heads (formulas: module docstring)."""
    d, dv, m, c = cfg.dim_head, cfg.dim_head, cfg.features, cfg.chunk_size
    features = 2 * (2 * n * m * d)
    linear = 2 * n * m * (dv + 1) + 2 * n * m * (dv + 1)
    per_head = {
        "favor": features + linear,
        "favor_causal": features + linear + 2 * n * c * m + 2 * n * c * (dv + 1),
        "cumsum_causal": features + linear,
        "sdpa": 4 * n * n * d,
        "sdpa_causal": 2 * n * n * d,
    }[base_method(method)]
    return float(per_head * cfg.batch * cfg.heads)


def base_method(method: str) -> str:
    """The eager CPU method a method computes the same thing as (itself for eager CPU ones)."""
    return GPU_METHODS.get(method) or ORT_METHODS.get(method) or method


def available_methods() -> tuple[str, ...]:
    """Every method that can run here: the GPU ones only with a CUDA device (and provider)."""
    return tuple(
        method
        for method in METHODS
        if method not in GPU_METHODS
        or (torch.cuda.is_available() and (method not in ORT_METHODS or ort_cuda_available()))
    )


def ort_cuda_available() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def cumsum_state_bytes(n: int, cfg: Config) -> int:
    """Size of the textbook form's ``(B, H, N, M, Dv)`` prefix-sum tensor."""
    return cfg.batch * cfg.heads * n * cfg.features * cfg.dim_head * FP32_BYTES


def naive_sdpa_bytes(n: int, cfg: Config) -> int:
    """Size of the ``(B, H, N, N)`` score matrix the math SDPA path would materialize."""
    return cfg.batch * cfg.heads * n * n * FP32_BYTES


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


def skip_reason(method: str, n: int, cfg: Config, args: argparse.Namespace) -> str | None:
    """Why a case is not run, or None: cases that would obviously exhaust memory, CPU SDPA above
    ``--sdpa-max-length`` (its O(n²) time dominates a sweep), and GPU cases without a GPU.
    """
    if method in GPU_METHODS and not torch.cuda.is_available():
        return "skipped (no CUDA device)"
    if method in GPU_METHODS and method in ORT_METHODS and not ort_cuda_available():
        return "skipped (onnxruntime has no CUDAExecutionProvider)"
    limit = args.sdpa_max_length
    if method.startswith("sdpa") and method not in GPU_METHODS and limit and n > limit:
        return f"skipped (time: O(n²) SDPA above --sdpa-max-length {limit})"
    if method == "cumsum_causal":
        size = cumsum_state_bytes(n, cfg)
        if size > args.cumsum_limit_gib * GIB:
            return f"skipped (memory: (B,H,N,M,Dv) prefix sums are {size / GIB:.0f} GiB)"
    if method.startswith("sdpa"):
        size = naive_sdpa_bytes(n, cfg)
        device = "cuda" if method in GPU_METHODS else "cpu"
        naive = sdpa_backend(cfg, CAUSAL[method], device) == SDPA_MATH_BACKEND
        if naive and size > args.sdpa_limit_gib * GIB:
            return f"skipped (memory: math SDPA would build {size / GIB:.0f} GiB of scores)"
    return None


# ---------------------------------------------------------------------------------------------
# Child side: one case per process
# ---------------------------------------------------------------------------------------------


def cumsum_causal(
    module: FavorAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Textbook causal linear attention: one ``M x Dv`` prefix-sum state per token."""
    phi_q, phi_k = module.feature_maps(q, k)
    values = v.to(phi_k.dtype)
    # (B, H, N, M, Dv): the O(n M Dv) tensor the chunked form exists to avoid.
    states = torch.cumsum(phi_k[..., :, None] * values[..., None, :], dim=2)
    normalizers = torch.cumsum(phi_k, dim=2)
    numerator = (phi_q[..., None, :] @ states).squeeze(-2)
    denominator = (phi_q * normalizers).sum(dim=-1, keepdim=True)
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def favor_module(method: str, cfg: Config) -> FavorAttention:
    """The module a FAVOR method runs (or exports); seed 0, so eager and ORT share weights."""
    return FavorAttention(
        cfg.dim_head, cfg.features, causal=CAUSAL[method], chunk_size=cfg.chunk_size
    ).eval()


def export_graph(method: str, cfg: Config, path: Path) -> Path:
    """Export an ORT method's module with a dynamic batch and length (dynamo, opset 17).

    Fused methods get favor-export's ``--fused-attention`` graph: the contraction as one
    ``com.microsoft.LinearAttention`` node.
    """
    n = 2 * cfg.chunk_size + 3
    example = tuple(torch.randn(cfg.batch, cfg.heads, n, cfg.dim_head) for _ in range(3))
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC}
    module = favor_module(ORT_METHODS[method], cfg)
    fused = method in FUSED_METHODS
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_torch_exporters(), fused_causal_attention(module) if fused else nullcontext():
        torch.onnx.export(
            module, example, str(path), dynamo=True,
            opset_version=GRAPH_OPSET, input_names=["q", "k", "v"], output_names=["out"],
            dynamic_shapes=(dims, dims, dims), verbose=False, report=False,
            custom_translation_table=translation_table() if fused else None,
        )  # fmt: skip
    return path


def ort_call(
    graph: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device: str = "cpu"
) -> Callable[[], object]:
    """A session on ``graph`` with favor.runtime's session options, on the CPU or CUDA provider.

    On CUDA, inputs and output are bound on the device, so a timed call is the graph itself
    rather than host-device copies.
    """
    import onnxruntime as ort

    from favor.runtime.session import session_options

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    session = ort.InferenceSession(graph, session_options(), providers=[provider])
    if session.get_providers()[0] != provider:
        # ORT falls back to the CPU silently when the CUDA provider fails to load.
        raise RuntimeError(f"onnxruntime could not use {provider}")
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    if device == "cpu":
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    binding.bind_output("out", "cuda")
    return lambda: session.run_with_iobinding(binding)


def method_device(method: str) -> str:
    """``"cuda"`` for the GPU methods, ``"cpu"`` for the others."""
    return "cuda" if method in GPU_METHODS else "cpu"


def build_call(method: str, n: int, cfg: Config, graph: str | None = None) -> Callable[[], object]:
    """Inputs, module and a no-argument closure that runs one attention call."""
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.batch, cfg.heads, n, cfg.dim_head)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    device = method_device(method)
    if graph is not None:
        return ort_call(graph, q, k, v, device)
    q, k, v = q.to(device), k.to(device), v.to(device)
    if method.startswith("sdpa"):
        causal = CAUSAL[method]
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    module = favor_module(method, cfg).to(device)
    if method == "cumsum_causal":
        return lambda: cumsum_causal(module, q, k, v)
    if method == "favor_causal_jit_cuda":
        # Traced at this case's length: what a TorchScript deployment of the module runs.
        with torch.no_grad(), quiet_torch_exporters():
            traced = torch.jit.trace(module, (q, k, v), check_trace=False)
        return lambda: traced(q, k, v)
    return lambda: module(q, k, v)


def time_call(fn: Callable[[], object], timing: Timing) -> list[float]:
    """Seconds per call: one warm-up, then at least ``min_runs`` calls and ``budget_s`` seconds."""
    start = time.perf_counter()
    fn()
    warm_up = time.perf_counter() - start
    # A slow case would spend minutes on min_runs calls; fewer runs of a multi-second call are
    # still far above timer noise.
    needed = timing.min_runs
    slow = warm_up * needed > timing.max_case_s
    if slow:
        needed = max(1, int(timing.max_case_s // warm_up))
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < needed or (not slow and time.perf_counter() - began < timing.budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark, so setup's transient peaks cannot hide the case's own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def current_rss_kib() -> int:
    """Resident set size now, in KiB, from /proc (``ru_maxrss`` only knows the peak)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status")


def peak_rss_kib() -> int:
    """Peak resident set size since the last reset, in KiB (Linux units of ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    # Steal counts: time the hypervisor gave to other guests is time this benchmark lost.
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """How many cores other processes kept busy between construction and :meth:`other_cores`.

    The machine is shared, and intra-op threads that lose their core mid-operation stall the
    whole op, so a case timed under contention can be several times slower. This makes that
    visible instead of silently reporting it.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        own = os.times()
        return time.perf_counter(), machine_busy_s(), own.user + own.system

    def other_cores(self) -> float:
        """Average cores used by everything except this process since construction."""
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def run_attention_case(spec: dict) -> dict:
    """Time one ``(method, n)`` case and measure its working memory; JSON-ready result."""
    cfg = Config(**spec["config"])
    method = spec["method"]
    call = build_call(method, spec["n"], cfg, spec.get("graph"))
    cuda = method_device(method) == "cuda"
    if cuda:
        kernel = call

        def call() -> None:
            # Kernels launch asynchronously; a call is timed until the device has finished it.
            kernel()
            torch.cuda.synchronize()

        torch.cuda.reset_peak_memory_stats()
        baseline_bytes = torch.cuda.memory_allocated()
    gc.collect()
    hwm_reset = reset_peak_rss()
    baseline = current_rss_kib()
    meter = LoadMeter()
    with torch.inference_mode():
        times = time_call(call, Timing(**spec["timing"]))
    other = meter.other_cores()
    peak_mib: float | None = max(peak_rss_kib() - baseline, 0) / 1024
    if cuda:
        # torch's allocator cannot see ORT's own CUDA allocations: no figure rather than 0.
        used = torch.cuda.max_memory_allocated() - baseline_bytes
        peak_mib = None if method in ORT_METHODS else max(used, 0) / 2**20
    return {
        "median_ms": 1e3 * statistics.median(times),
        "runs": len(times),
        "peak_mib": peak_mib,
        "hwm_reset": hwm_reset,
        "threads": torch.get_num_threads(),
        "other_load": other,
    }


def run_matmul_case(spec: dict) -> dict:
    """fp32 SGEMM rate of ``torch.matmul`` on square matrices, the efficiency yardstick."""
    size = spec["size"]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    meter = LoadMeter()
    with torch.inference_mode():
        times = time_call(lambda: a @ b, Timing(**spec["timing"]))
    median = statistics.median(times)
    return {
        "median_ms": 1e3 * median,
        "runs": len(times),
        "gflops": 2 * size**3 / median / 1e9,
        "threads": torch.get_num_threads(),
        "other_load": meter.other_cores(),
    }


def run_case(spec: dict) -> dict:
    """Dispatch a ``--case`` spec to the matmul, export or attention runner."""
    if spec["kind"] == "matmul":
        return run_matmul_case(spec)
    if spec["kind"] == "export":
        path = export_graph(spec["method"], Config(**spec["config"]), Path(spec["path"]))
        return {"path": str(path)}
    return run_attention_case(spec)


# ---------------------------------------------------------------------------------------------
# Parent side: spawn cases, collect, report
# ---------------------------------------------------------------------------------------------


def spawn_case(spec: dict, timeout_s: float) -> dict:
    """Run one spec in a fresh interpreter; a crash or timeout becomes an ``error`` entry."""
    command = [sys.executable, "-m", "benchmarks.attention", "--case", json.dumps(spec)]
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        # A negative code is a signal: -9 is most likely the kernel's OOM killer.
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"failed (rc={proc.returncode}) {tail[0][:120]}".rstrip()}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_left(args: argparse.Namespace) -> float:
    """Seconds left before ``--max-minutes``, after which the sweep stops waiting and retrying."""
    return max(0.0, args.deadline - time.monotonic())


def wait_until_quiet(args: argparse.Namespace, patience_s: float) -> float:
    """Poll until other processes use few cores, or ``patience_s`` runs out; the last load."""
    deadline = time.monotonic() + min(patience_s, time_left(args))
    while True:
        meter = LoadMeter()
        time.sleep(0.5)
        load = meter.other_cores()
        if load <= args.max_other_load or time.monotonic() >= deadline:
            return load


def measure(spec: dict, args: argparse.Namespace, patience_s: float | None = None) -> dict:
    """Run a case, again (up to ``--retries`` times) if other processes disturbed it.

    Keeps the attempt with the least foreign load. Long cases are not retried: they cost more
    than the noise they would remove, and their table row carries the load figure instead.
    ``patience_s`` overrides ``--quiet-wait``.
    """
    best: dict | None = None
    for attempt in range(1 + args.retries):
        wait_until_quiet(args, args.quiet_wait if patience_s is None else patience_s)
        result = spawn_case(spec, args.case_timeout)
        if "error" in result:
            # A crash on a retry should not throw away a good first attempt.
            return best or result
        if best is None or result["other_load"] < best["other_load"]:
            best = result
        measured_s = result["median_ms"] * result["runs"] / 1e3
        if (
            result["other_load"] <= args.max_other_load
            or measured_s > RETRY_MAX_CASE_S
            or time_left(args) <= 0
        ):
            break
        if attempt < args.retries:
            note = f"other processes used {result['other_load']:.2f} cores; retrying"
            print(f"         {note}", file=sys.stderr, flush=True)
    assert best is not None
    return best


def describe(result: dict) -> str:
    """One progress line's worth of a finished case."""
    if "skipped" in result:
        return result["skipped"]
    if "error" in result:
        return result["error"]
    timing = f"{result['median_ms']:.1f} ms (median of {result['runs']})"
    return f"{timing}, {format_mib(result)} MiB, other load {result['other_load']:.2f}"


def format_mib(result: dict) -> str:
    """A case's peak memory for a table cell; ``n/a`` where it could not be measured."""
    return "n/a" if result["peak_mib"] is None else f"{result['peak_mib']:.1f}"


def measure_matmul(args: argparse.Namespace, timing: Timing, label: str) -> dict:
    """The SGEMM reference case, with a progress line."""
    print(f"[{label}] matmul {args.matmul_size}^3 ...", file=sys.stderr, flush=True)
    spec = {"kind": "matmul", "size": args.matmul_size, "timing": vars(timing)}
    # Every "% of matmul" figure divides by this one, so it is worth waiting longer for quiet.
    matmul = measure(spec, args, patience_s=max(args.quiet_wait, MATMUL_QUIET_WAIT_S))
    if "error" in matmul:
        raise SystemExit(f"matmul reference failed: {matmul['error']}")
    note = f"{matmul['gflops']:.1f} GFLOP/s, other load {matmul['other_load']:.2f}"
    print(f"         {note}", file=sys.stderr, flush=True)
    return matmul


def progress(label: str, result: dict) -> None:
    """One stderr line for a finished case."""
    line = f"[{label}] n={result['n']:<6d} {LABELS[result['method']]:<24s} {describe(result)}"
    print(line, file=sys.stderr, flush=True)


def disturbed(result: dict, args: argparse.Namespace) -> bool:
    """Whether other processes used enough CPU during a measured case to inflate its time."""
    return "median_ms" in result and result["other_load"] > args.max_other_load


def remeasure_if_disturbed(result: dict, args: argparse.Namespace) -> dict:
    """One more attempt after the sweep for a short case that stayed disturbed.

    Contention on a shared machine comes in bursts of minutes, so immediate retries often hit
    the same burst; a later window often does not. The less disturbed result is kept.
    """
    measured_s = result.get("median_ms", 0.0) * result.get("runs", 0) / 1e3
    if not disturbed(result, args) or measured_s > RETRY_MAX_CASE_S or time_left(args) <= 0:
        return result
    again = measure(result["spec"], args)
    if "error" in again or again["other_load"] >= result["other_load"]:
        return result
    again.update({key: result[key] for key in ("n", "method", "flops", "spec")})
    progress("again", again)
    return again


def run_sweep(args: argparse.Namespace, cfg: Config, timing: Timing) -> tuple[dict, list[dict]]:
    """Every ``(n, method)`` case between two matmul references; progress goes to stderr.

    The reference is taken before and after the sweep and the faster one is kept: a single
    measurement that another process disturbed would inflate every "% of matmul" figure.
    Disturbed short cases get one more attempt once the sweep is through.
    """
    timing_spec = vars(timing)
    total = 2 + len(args.lengths) * len(args.methods)
    print("exporting the ORT methods' graphs", file=sys.stderr, flush=True)
    # Exported in child processes too: an export leaves the parent in a state (torch.export's
    # caches) that inflated every later case's measured peak memory by about 150 MiB.
    graphs = {}
    for method in ORT_METHODS:
        if method in args.methods:
            path = args.out_dir / "graphs" / f"{method}.onnx"
            spec = {"kind": "export", "method": method, "config": vars(cfg), "path": str(path)}
            result = spawn_case(spec, args.case_timeout)
            if "error" in result:
                raise SystemExit(f"exporting {method} failed: {result['error']}")
            graphs[method] = result["path"]
    first = measure_matmul(args, timing, f" 1/{total}")
    results = []
    index = 1
    for n in args.lengths:
        for method in args.methods:
            index += 1
            spec = {
                "kind": "attention",
                "method": method,
                "n": n,
                "config": vars(cfg),
                "timing": timing_spec,
                "graph": graphs.get(method),
            }
            reason = skip_reason(method, n, cfg, args)
            result = {"skipped": reason} if reason else measure(spec, args)
            result.update(n=n, method=method, flops=flops(method, n, cfg), spec=spec)
            results.append(result)
            progress(f"{index:2d}/{total}", result)
    results = [remeasure_if_disturbed(result, args) for result in results]
    last = measure_matmul(args, timing, f"{total}/{total}")
    matmul = max(first, last, key=lambda result: result["gflops"])
    matmul["gflops_first_last"] = (first["gflops"], last["gflops"])
    return matmul, results


def speedup(result: dict, by_key: dict[tuple[int, str], dict]) -> str:
    """SDPA time with the same causality over this method's time, for the non-SDPA rows."""
    method = result["method"]
    if method.startswith("sdpa") or "median_ms" not in result:
        return ""
    # GPU rows race SDPA on the same device; CPU SDPA would flatter them.
    device = "_cuda" if method in GPU_METHODS else ""
    name = ("sdpa_causal" if CAUSAL[method] else "sdpa") + device
    baseline = by_key.get((result["n"], name), {})
    if "median_ms" not in baseline:
        return ""
    return f"{baseline['median_ms'] / result['median_ms']:.2f}x"


def efficiency(result: dict, matmul: dict) -> tuple[float, float | None]:
    """Achieved GFLOP/s of a measured case, and its percentage of the CPU matmul reference.

    The percentage is None for GPU cases: a CPU SGEMM rate is no yardstick for them.
    """
    gflops = result["flops"] / (result["median_ms"] / 1e3) / 1e9
    if result["method"] in GPU_METHODS:
        return gflops, None
    return gflops, 100 * gflops / matmul["gflops"]


def render_table(matmul: dict, results: list[dict], max_other_load: float) -> str:
    """The results as a markdown table, one row per case, skipped cases included."""
    by_key = {(r["n"], r["method"]): r for r in results}
    lines = [
        "| n | method | ms | runs | peak MiB | GFLOP/s | % of matmul | speedup vs SDPA "
        "| other load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        label = LABELS[r["method"]]
        if "median_ms" not in r:
            status = r.get("skipped") or r.get("error")
            lines.append(f"| {r['n']} | {label} | {status} | | | | | | |")
            continue
        gflops, percent = efficiency(r, matmul)
        memory_mark = "" if r["hwm_reset"] else "*"
        load_mark = " †" if r["other_load"] > max_other_load else ""
        lines.append(
            f"| {r['n']} | {label} | {r['median_ms']:.1f}{load_mark} | {r['runs']} | "
            f"{format_mib(r)}{memory_mark} | {gflops:.1f} | "
            f"{'' if percent is None else f'{percent:.1f}'} | {speedup(r, by_key)} | "
            f"{r['other_load']:.2f} |"
        )
    lines.append("")
    lines.append(
        "other load: cores other processes used while the case ran (this machine is shared); "
        f"† marks more than {max_other_load:g}, so that time is likely inflated."
    )
    if any(not r.get("hwm_reset", True) for r in results):
        lines.append("\\* RSS high-water mark could not be reset: the figure may include setup.")
    return "\n".join(lines)


def render_header(args: argparse.Namespace, cfg: Config, matmul: dict, elapsed_s: float) -> str:
    """Machine, software and configuration facts that the table's numbers depend on."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# Attention benchmark: FAVOR+ vs SDPA (CPU, fp32)",
            "",
            f"- date: {now}",
            f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, "
            f"{matmul['threads']} torch threads",
            f"- torch {torch.__version__}",
            f"- matmul reference: {matmul['gflops']:.1f} GFLOP/s "
            f"(fp32 {args.matmul_size}x{args.matmul_size} @ {args.matmul_size}x"
            f"{args.matmul_size}, median of {matmul['runs']}, other load "
            f"{matmul['other_load']:.2f} cores; the faster of "
            f"{matmul['gflops_first_last'][0]:.1f} before and "
            f"{matmul['gflops_first_last'][1]:.1f} after the sweep)",
            f"- B={cfg.batch}, H={cfg.heads}, D=Dv={cfg.dim_head}, M={cfg.features} features "
            f"(posrf, orf), chunk C={cfg.chunk_size}",
            f"- timing: median after one warm-up, >= {args.min_runs} runs and >= {args.budget} s "
            f"(fewer runs when one call is slow); peak MiB is RSS above the inputs, per fresh "
            "process",
            "- FLOPs (matrix products only, formulas in `benchmarks/attention.py`): "
            "favor 4nMD + 4nM(Dv+1); favor causal adds 2nCM + 2nC(Dv+1); cumsum as favor; "
            "sdpa 4n²D, sdpa causal 2n²D; all times B·H",
            "- speedup vs SDPA: SDPA time with the same causality (and device) / this "
            "method's time",
            f"- CUDA: {machine_info()['cuda_device'] or 'no CUDA device (GPU rows not run)'}",
            f"- sweep wall time: {elapsed_s / 60:.1f} min",
        ]
    )


def plot(results: list[dict], path: Path, max_other_load: float) -> None:
    """Latency and peak memory against n, log-log, one line per method.

    Latency points taken while other processes used more than ``max_other_load`` cores are
    drawn hollow, like the table's † rows.
    """
    import matplotlib

    # Agg needs no display; select it before pyplot is imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.8))
    for method in METHODS:
        done = [r for r in results if r["method"] == method and "median_ms" in r]
        if not done:
            continue
        label = LABELS[method]
        style = "--" if method in GPU_METHODS else "-"
        (line,) = latency.plot(
            [r["n"] for r in done], [r["median_ms"] for r in done], style, label=label
        )
        for r in done:
            disturbed = r["other_load"] > max_other_load
            face = "white" if disturbed else line.get_color()
            latency.plot(r["n"], r["median_ms"], "o", color=line.get_color(), markerfacecolor=face)
        # Tiny cases can measure 0 MiB above baseline, which a log axis cannot show.
        sized = [r for r in done if (r["peak_mib"] or 0) > 0]
        memory.plot(
            [r["n"] for r in sized], [r["peak_mib"] for r in sized], "o" + style, label=label
        )
    for axis, title, unit in (
        (latency, "latency (hollow: other processes were busy)", "ms per call (median)"),
        (memory, "peak working memory", "MiB above inputs"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length n")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(
    out_dir: Path, header: str, table: str, results: list[dict], max_other_load: float
) -> None:
    """``attention.md`` (header and table) and ``attention.png`` (latency and memory plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention.md").write_text(f"{header}\n\n{table}\n")
    plot(results, out_dir / "attention.png", max_other_load)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def lengths_arg(text: str) -> tuple[int, ...]:
    """Parse ``512,1024`` into positive ints for argparse."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be integers >= 1: {text!r}")
    return values


def methods_arg(text: str) -> tuple[str, ...]:
    """Parse ``favor,sdpa`` into known method names, in the table's order."""
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(METHODS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"methods must be some of {', '.join(METHODS)}; got {text!r}"
        )
    return tuple(method for method in METHODS if method in chosen)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--case`` is internal (one case, run in a child process)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention",
        description="Time FAVOR+ (non-causal, chunked causal, textbook cumsum causal) against "
        "torch SDPA on CPU in fp32, measure each case's peak memory in a fresh process, and "
        "compare achieved GFLOP/s with a matmul measured in the same run. Prints a markdown "
        "table and writes attention.md, attention.json and attention.png to --out-dir.",
    )
    parser.add_argument(
        "--lengths",
        type=lengths_arg,
        default=",".join(map(str, DEFAULT_LENGTHS)),
        help="comma-separated sequence lengths (default: %(default)s)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="only n = 512,1024,2048 (overrides --lengths)"
    )
    parser.add_argument(
        "--methods",
        type=methods_arg,
        default=None,
        help="comma-separated methods to run, of " + ", ".join(METHODS) + " (default: all that "
        "can run here; the *_cuda ones need a CUDA device)",
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default: 1)")
    parser.add_argument("--heads", type=int, default=8, help="heads H (default: 8)")
    parser.add_argument("--dim-head", type=int, default=64, help="head size D = Dv (default: 64)")
    parser.add_argument("--features", type=int, default=128, help="features M (default: 128)")
    parser.add_argument(
        "--chunk-size", type=int, default=64, help="causal FAVOR chunk size C (default: 64)"
    )
    parser.add_argument(
        "--budget", type=float, default=2.0, help="seconds of measured calls per case (default: 2)"
    )
    parser.add_argument(
        "--min-runs", type=int, default=3, help="measured calls per case at least (default: 3)"
    )
    parser.add_argument(
        "--max-case-seconds",
        type=float,
        default=30.0,
        help="cases whose warm-up call is slow get fewer runs, so that their measured calls "
        "take about this long at most (default: 30)",
    )
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="square fp32 matmul reference (default: 2048)"
    )
    parser.add_argument(
        "--cumsum-limit-gib",
        type=float,
        default=4.0,
        help="skip the textbook cumsum when its (B,H,N,M,Dv) tensor exceeds this (default: 4)",
    )
    parser.add_argument(
        "--sdpa-limit-gib",
        type=float,
        default=8.0,
        help="skip SDPA when torch would take the math path and its n x n scores exceed this "
        "(default: 8)",
    )
    parser.add_argument(
        "--sdpa-max-length",
        type=int,
        default=0,
        help="skip CPU SDPA above this length: its O(n²) time dominates a sweep (one causal "
        "call at n = 65536 takes over 30 s on 2 cores); 0 for no limit (default: 0)",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="cores other processes may use during a case before it counts as disturbed "
        "(default: 0.25)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="seconds to wait at most, before each case, for other processes to go quiet "
        "(default: 5)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="extra attempts for a disturbed case shorter than 10 s; the least disturbed "
        "attempt is kept (default: 1)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=13.0,
        help="after this many minutes the sweep stops waiting for quiet and retrying disturbed "
        "cases; every case still runs once, so a sweep ends soon after (default: 13)",
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=600.0,
        help="seconds before a case's process is killed (default: 600)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="where attention.md and attention.png go (default: benchmarks/results/)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths = QUICK_LENGTHS
    if args.methods is None and not args.case:
        args.methods = available_methods()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep (or, with ``--case``, a single case) and report."""
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    run(args)
    return 0


def run(args: argparse.Namespace) -> dict:
    """Run the sweep, print its table, write attention.md, .png and .json; the JSON report.

    ``python -m benchmarks`` calls this with options from :func:`parse_args`.
    """
    cfg = Config(args.batch, args.heads, args.dim_head, args.features, args.chunk_size)
    timing = Timing(args.budget, args.min_runs, args.max_case_seconds)
    started = time.perf_counter()
    args.deadline = time.monotonic() + 60 * args.max_minutes
    matmul, results = run_sweep(args, cfg, timing)
    header = render_header(args, cfg, matmul, time.perf_counter() - started)
    table = render_table(matmul, results, args.max_other_load)
    print(f"matmul reference: {matmul['gflops']:.1f} GFLOP/s\n")
    print(table)
    write_outputs(args.out_dir, header, table, results, args.max_other_load)
    report = json_report(cfg, matmul, results)
    (args.out_dir / "attention.json").write_text(json.dumps(report, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    print(
        f"wrote attention.md, attention.json and attention.png to {args.out_dir} "
        f"in {elapsed:.0f} s",
        file=sys.stderr,
    )
    return report


def json_report(cfg: Config, matmul: dict, results: list[dict]) -> dict:
    """Machine-readable results: one record per case, with its GFLOP/s and % of matmul.

    Skipped and failed cases keep their ``skipped`` / ``error`` text and have no timing, so
    readers (``benchmarks.targets``) can tell "not run" from a measurement.
    """
    records = []
    for result in results:
        record = {key: value for key, value in result.items() if key != "spec"}
        record.update(label=LABELS[result["method"]], causal=CAUSAL[result["method"]])
        if "median_ms" in result:
            record["gflops"], record["pct_of_matmul"] = efficiency(result, matmul)
        records.append(record)
    return {
        "machine": machine_info(),
        "config": vars(cfg),
        "matmul": {key: matmul[key] for key in ("gflops", "gflops_first_last", "runs")},
        "results": records,
    }


if __name__ == "__main__":
    raise SystemExit(main())
