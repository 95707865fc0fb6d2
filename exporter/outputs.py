"""Output discovery: the names, dims and dtypes of what a module returns, found by running it."""

from __future__ import annotations

import torch
from torch import nn

from .specs import ModelSpec


def describe_outputs(
    module: nn.Module, spec: ModelSpec
) -> tuple[dict[str, tuple[int | str, ...]], dict[str, str]]:
    """``(dims, dtypes)`` of each output. A dim is a symbol where it tracks an input symbol and
    an int where it is fixed.

    Found by running the module at two sets of sizes that share no values, so a dim that
    follows ``seq`` is told apart from one that follows ``batch`` or from a constant.
    """
    first = spec.example_sizes
    second = {s: size + 5 + 2 * i for i, (s, size) in enumerate(first.items())}
    with torch.no_grad():
        runs = [module(*spec.sample(sizes)) for sizes in (first, second)]
    runs = [r if isinstance(r, tuple) else (r,) for r in runs]
    dims: dict[str, tuple[int | str, ...]] = {}
    for name, a, b in zip(spec.output_names, *runs, strict=True):
        entry: list[int | str] = []
        for axis, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)):
            symbol = next((s for s in first if first[s] == x and second[s] == y), None)
            entry.append(symbol or (x if x == y else f"{name}_dim{axis}"))
        dims[name] = tuple(entry)
    dtypes = {
        n: str(t.dtype).removeprefix("torch.")
        for n, t in zip(spec.output_names, runs[0], strict=True)
    }
    return dims, dtypes
