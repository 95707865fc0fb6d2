"""The attention sweep: every ``(n, method)`` case in its own process, between two matmul rates.

The parent (:func:`run_sweep`) exports the ORT methods' graphs, then spawns one child per case
through :class:`benchmarks.harness.CaseRunner`; a child (:func:`run_case`, behind
``python -m benchmarks.attention --case SPEC``) builds one call and measures it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.attention_methods import METHODS, Config, Limits, export_graph, graph_name
from benchmarks.attention_report import describe
from benchmarks.harness import CaseRunner, Timing, measure_call

CASE_MODULE = "benchmarks.attention"
# Seconds to wait for other processes to go quiet before each matmul reference.
MATMUL_QUIET_WAIT_S = 60.0

# ---------------------------------------------------------------------------------------------
# Child side: one case per process
# ---------------------------------------------------------------------------------------------


def run_attention_case(spec: dict) -> dict:
    """Time one ``(method, n)`` case and measure its working memory; JSON-ready result."""
    cfg = Config(**spec["config"])
    method = METHODS[spec["method"]]
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.batch, cfg.heads, spec["n"], cfg.dim_head)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    call = method.build(method, cfg, (q, k, v), spec.get("graph"))
    cuda = method.device == "cuda"
    result = measure_call(call, Timing(**spec["timing"]), cuda=cuda)
    if cuda and method.graph:
        # torch's allocator cannot see ORT's own CUDA allocations: no figure rather than 0.
        result["peak_mib"] = None
    return result


def run_matmul_case(spec: dict) -> dict:
    """fp32 SGEMM rate of ``torch.matmul`` on square matrices, the efficiency yardstick."""
    size = spec["size"]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    result = measure_call(lambda: a @ b, Timing(**spec["timing"]))
    result["gflops"] = 2 * size**3 / (result["median_ms"] / 1e3) / 1e9
    return result


def run_case(spec: dict) -> dict:
    """Dispatch a ``--case`` spec to the matmul, export or attention runner."""
    if spec["kind"] == "matmul":
        return run_matmul_case(spec)
    if spec["kind"] == "export":
        method = METHODS[spec["method"]]
        path = export_graph(method, Config(**spec["config"]), Path(spec["out_dir"]))
        return {"path": str(path)}
    return run_attention_case(spec)


# ---------------------------------------------------------------------------------------------
# Parent side: spawn cases, collect
# ---------------------------------------------------------------------------------------------


def progress(label: str, result: dict) -> None:
    """One stderr line for a finished case."""
    name = METHODS[result["method"]].label
    print(
        f"[{label}] n={result['n']:<6d} {name:<24s} {describe(result)}", file=sys.stderr, flush=True
    )


def export_graphs(runner: CaseRunner, methods: tuple[str, ...], cfg: Config, out_dir: Path) -> dict:
    """The graph file of each chosen ORT method, exported once per distinct graph.

    Exported in child processes: an export leaves the parent in a state (torch.export's caches)
    that inflated every later case's measured peak memory by about 150 MiB.
    """
    print("exporting the ORT methods' graphs", file=sys.stderr, flush=True)
    paths: dict[str, str] = {}
    by_file: dict[str, str] = {}
    for name in methods:
        method = METHODS[name]
        if method.graph is None:
            continue
        file = graph_name(method)  # CPU and CUDA methods share a graph
        if file not in by_file:
            spec = {"kind": "export", "method": name, "config": vars(cfg), "out_dir": str(out_dir)}
            result = runner.spawn(spec)
            if "error" in result:
                raise SystemExit(f"exporting {name} failed: {result['error']}")
            by_file[file] = result["path"]
        paths[name] = by_file[file]
    return paths


def measure_matmul(runner: CaseRunner, size: int, timing: Timing, label: str) -> dict:
    """The SGEMM reference case, with a progress line."""
    print(f"[{label}] matmul {size}^3 ...", file=sys.stderr, flush=True)
    spec = {"kind": "matmul", "size": size, "timing": vars(timing)}
    # Every "% of matmul" figure divides by this one, so it is worth waiting longer for quiet.
    matmul = runner.measure(spec, patience_s=max(runner.quiet_wait, MATMUL_QUIET_WAIT_S))
    if "error" in matmul:
        raise SystemExit(f"matmul reference failed: {matmul['error']}")
    note = f"{matmul['gflops']:.1f} GFLOP/s, other load {matmul['other_load']:.2f}"
    print(f"         {note}", file=sys.stderr, flush=True)
    return matmul


def run_sweep(
    args: argparse.Namespace, runner: CaseRunner, cfg: Config, timing: Timing
) -> tuple[dict, list[dict]]:
    """Every ``(n, method)`` case between two matmul references; progress goes to stderr.

    The reference is taken before and after the sweep and the faster one is kept: a single
    measurement that another process disturbed would inflate every "% of matmul" figure.
    Disturbed short cases get one more attempt once the sweep is through.
    """
    limits = Limits(args.sdpa_max_length, args.sdpa_limit_gib, args.cumsum_limit_gib)
    total = 2 + len(args.lengths) * len(args.methods)
    graphs = export_graphs(runner, args.methods, cfg, args.out_dir / "graphs")
    first = measure_matmul(runner, args.matmul_size, timing, f" 1/{total}")
    results = []
    for n in args.lengths:
        for name in args.methods:
            spec = {
                "kind": "attention",
                "method": name,
                "n": n,
                "config": vars(cfg),
                "timing": vars(timing),
                "graph": graphs.get(name),
            }
            reason = METHODS[name].skip_reason(n, cfg, limits)
            result = {"skipped": reason} if reason else runner.measure(spec)
            result.update(n=n, method=name, flops=METHODS[name].flops(n, cfg), spec=spec)
            results.append(result)
            progress(f"{len(results) + 1:2d}/{total}", result)
    for index, result in enumerate(results):
        again = runner.remeasure(result, result["spec"])
        if again is not None:
            results[index] = again
            progress("again", again)
    last = measure_matmul(runner, args.matmul_size, timing, f"{total}/{total}")
    matmul = max(first, last, key=lambda result: result["gflops"])
    matmul["gflops_first_last"] = (first["gflops"], last["gflops"])
    return matmul, results
