"""Declarative descriptions of a model's inputs, outputs and carried state.

One :class:`ModelSpec` drives everything downstream: the example inputs for tracing, the dynamic
axes, the validation sweep and the manifest. The reference models in :mod:`favor.ops.models`
have built-in specs; any other module declares its inputs with ``NAME:DIMS:DTYPE`` strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import ExportError

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
SAMPLERS = ("data", "zeros", "padding-mask")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_EXAMPLE_SIZE = {"batch": 2}
DEFAULT_SYMBOL_SIZE = 24


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: ``dims`` mixes fixed sizes (int) and symbolic names (str).

    ``sampler`` says how validation fills it: random ``data`` (integers from ``[low, high)``),
    ``zeros`` (an empty recurrent state), or a ``padding-mask`` (True at trailing positions).
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str
    low: int = 0
    high: int = 2
    sampler: str = "data"

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)

    def sample(self, sizes: dict[str, int], generator: torch.Generator) -> torch.Tensor:
        shape, dtype = self.shape(sizes), TORCH_DTYPES[self.dtype]
        if self.sampler == "zeros":
            return torch.zeros(shape, dtype=dtype)
        if self.sampler == "padding-mask":
            # Each row keeps a random-length prefix (at least one token) and pads the rest.
            length = shape[-1]
            keep = torch.randint(1, length + 1, (*shape[:-1], 1), generator=generator)
            return (torch.arange(length) >= keep).to(dtype)
        if dtype.is_floating_point:
            return (torch.randn(shape, generator=generator) * 0.5).to(dtype)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).to(dtype)
        return torch.randint(self.low, self.high, shape, generator=generator, dtype=dtype)

    def to_json(self) -> dict:
        entry: dict = {"name": self.name, "dtype": self.dtype, "shape": list(self.dims)}
        if self.dtype.startswith("int") and self.sampler == "data":
            entry["range"] = [self.low, self.high]
        return entry


@dataclass(frozen=True)
class StateSpec:
    """A carried tensor: output ``output`` of one call is input ``input`` of the next."""

    input: str
    output: str


@dataclass(frozen=True)
class ModelSpec:
    """Inputs, outputs, state wiring and the shapes to trace and validate at."""

    kind: str  # "causal-lm", "encoder" or "module"
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    example_sizes: dict[str, int]
    sweep: tuple[dict[str, int], ...]
    states: tuple[StateSpec, ...] = ()
    sequence_dim: str | None = None
    chunk_size: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def symbols(self) -> list[str]:
        seen: list[str] = []
        for spec in self.inputs:
            seen += [d for d in spec.dims if isinstance(d, str) and d not in seen]
        return seen

    def sample(self, sizes: dict[str, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return tuple(spec.sample(sizes, generator) for spec in self.inputs)

    def example(self) -> tuple[torch.Tensor, ...]:
        return self.sample(self.example_sizes)


def parse_input_spec(text: str) -> tuple[TensorSpec, dict[str, int]]:
    """Parse ``NAME:DIMS:DTYPE[:LOW..HIGH]``, e.g. ``x:batch,seq=64,256:float32``.

    A dim is a size (``256``), a symbolic name (``seq``), or a name with the example size to
    trace at (``seq=64``). Integer inputs may give the range their values are drawn from for
    validation (``tokens:batch,seq:int64:0..1000``). Returns the spec and the example sizes.
    """
    hint = f"--input {text!r} must look like NAME:DIMS:DTYPE, e.g. x:batch,seq=64,256:float32"
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise ExportError(hint)
    name, dims_text, dtype = parts[:3]
    if not _SYMBOL.match(name):
        raise ExportError(f"{hint}: {name!r} is not a valid input name")
    if dtype not in TORCH_DTYPES:
        raise ExportError(f"{hint}: unknown dtype {dtype!r} (one of {', '.join(TORCH_DTYPES)})")
    dims: list[int | str] = []
    examples: dict[str, int] = {}
    for item in dims_text.split(","):
        symbol, _, example = item.partition("=")
        if symbol.isdigit() and not example:
            if int(symbol) < 1:
                raise ExportError(f"{hint}: dim {item!r} must be >= 1")
            dims.append(int(symbol))
        elif _SYMBOL.match(symbol) and (not example or example.isdigit()):
            dims.append(symbol)
            if example:
                examples[symbol] = int(example)
        else:
            raise ExportError(f"{hint}: cannot read dim {item!r}")
    low, high = 0, 2
    if len(parts) == 4:
        match = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[3])
        if not match or not dtype.startswith("int") or int(match[1]) >= int(match[2]):
            raise ExportError(f"{hint}: value range {parts[3]!r} must be LOW..HIGH on an int input")
        low, high = int(match[1]), int(match[2])
    return TensorSpec(name, tuple(dims), dtype, low=low, high=high), examples


def declared_spec(texts: list[str], output_names: tuple[str, ...]) -> ModelSpec:
    """A :class:`ModelSpec` for an arbitrary module from its ``--input`` declarations.

    Validation runs at the example sizes, at 1 for every symbol, and past the example sizes.
    """
    if not texts:
        raise ExportError(
            "this model's inputs are unknown: declare each with --input NAME:DIMS:DTYPE "
            "(e.g. --input x:batch,seq,256:float32)"
        )
    specs, examples = [], {}
    for text in texts:
        spec, sizes = parse_input_spec(text)
        if spec.name in {s.name for s in specs}:
            raise ExportError(f"--input {spec.name!r} is declared twice")
        specs.append(spec)
        examples.update(sizes)
    symbols = [d for s in specs for d in s.dims if isinstance(d, str)]
    for symbol in symbols:
        default = DEFAULT_EXAMPLE_SIZE.get(symbol, DEFAULT_SYMBOL_SIZE)
        examples.setdefault(symbol, default)
    sweep = (
        dict(examples),
        {s: 1 for s in symbols},
        {s: 2 * examples[s] + 1 for s in symbols},
    )
    return ModelSpec("module", tuple(specs), output_names, examples, sweep)
