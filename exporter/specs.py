"""Declarative descriptions of a model's inputs, outputs and carried state.

One :class:`ModelSpec` drives everything downstream: the example inputs for tracing, the dynamic
axes, the validation sweep and the manifest. The reference models in :mod:`favor.ops.models`
have built-in specs; any other module declares its inputs with ``NAME:DIMS:DTYPE`` strings.
An integer input's value range comes from its declaration or from the ``nn.Embedding`` that
reads it (:func:`infer_value_ranges`); validation never guesses one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from favor.runtime.contract import ModelKind, Sampler, TensorEntry
from favor.runtime.dtypes import DTYPE_NAMES

from .errors import ExportError

# The manifest's dtype names (favor.runtime.dtypes) as torch dtypes.
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_EXAMPLE_SIZE = {"batch": 2}
DEFAULT_SYMBOL_SIZE = 24


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: ``dims`` mixes fixed sizes (int) and symbolic names (str).

    ``sampler`` says how validation fills it: random ``data`` (integers from ``[low, high)``),
    ``zeros`` (an empty recurrent state), a ``padding-mask`` (True at trailing positions) or a
    ``keep-mask`` (True at the leading, real positions).
    ``high`` is None while an integer input's range is unknown: it cannot be sampled then.
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str
    low: int = 0
    high: int | None = None
    sampler: Sampler = Sampler.DATA

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", _member(Sampler, self.sampler, "sampler"))

    @property
    def integer_data(self) -> bool:
        """Random integers, e.g. token ids: the input whose values need a range."""
        return self.sampler is Sampler.DATA and self.dtype.startswith("int")

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)

    def sample(self, sizes: dict[str, int], generator: torch.Generator) -> torch.Tensor:
        shape, dtype = self.shape(sizes), TORCH_DTYPES[self.dtype]
        if self.sampler is Sampler.ZEROS:
            return torch.zeros(shape, dtype=dtype)
        if self.sampler in (Sampler.PADDING_MASK, Sampler.KEEP_MASK):
            # Each row keeps a random-length prefix (at least one token) and pads the rest.
            length = shape[-1]
            keep = torch.randint(1, length + 1, (*shape[:-1], 1), generator=generator)
            padding = torch.arange(length) >= keep
            return (padding if self.sampler is Sampler.PADDING_MASK else ~padding).to(dtype)
        if dtype.is_floating_point:
            return (torch.randn(shape, generator=generator) * 0.5).to(dtype)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).to(dtype)
        if self.high is None:
            raise ExportError(
                f"integer input {self.name!r} has no value range to draw from: declare it as "
                f"{self.name}:DIMS:{self.dtype}:LOW..HIGH"
            )
        return torch.randint(self.low, self.high, shape, generator=generator, dtype=dtype)

    def entry(self) -> TensorEntry:
        """The manifest's entry: the range only for integer data (token ids), where known."""
        known = self.integer_data and self.high is not None
        value_range = (self.low, self.high) if known else None
        return TensorEntry(self.name, self.dtype, self.dims, value_range, self.sampler)


@dataclass(frozen=True)
class StateSpec:
    """A carried tensor: output ``output`` of one call is input ``input`` of the next."""

    input: str
    output: str


@dataclass(frozen=True)
class ModelSpec:
    """Inputs, outputs, state wiring and the shapes to trace and validate at."""

    kind: ModelKind
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    example_sizes: dict[str, int]
    sweep: tuple[dict[str, int], ...]
    states: tuple[StateSpec, ...] = ()
    sequence_dim: str | None = None
    chunk_size: int | None = None
    # The longest sequence the model takes; checks never go past it. None: unbounded.
    max_length: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _member(ModelKind, self.kind, "model kind"))

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


def _member(names: type[Enum], value: object, what: str) -> Enum:
    """``value`` as a member of ``names``; an unknown name is an ExportError listing the known."""
    try:
        return names(value)
    except ValueError:
        known = ", ".join(member.value for member in names)
        raise ExportError(f"unknown {what} {value!r}; one of {known}") from None


def parse_input_spec(text: str) -> tuple[TensorSpec, dict[str, int]]:
    """Parse ``NAME:DIMS:DTYPE[:LOW..HIGH]``, e.g. ``x:batch,seq=64,256:float32``.

    A dim is a size (``256``), a symbolic name (``seq``), or a name with the example size to
    trace at (``seq=64``). Integer inputs may give the range their values are drawn from for
    validation (``tokens:batch,seq:int64:0..1000``); without one it stays unknown (``high``
    None) for :func:`infer_value_ranges`. Returns the spec and the example sizes.
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
    low, high = 0, None
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
    return ModelSpec(ModelKind.MODULE, tuple(specs), output_names, examples, sweep)


def embedding_ranges(model: nn.Module, spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """``{input: (0, num_embeddings)}`` for each integer input an ``nn.Embedding`` reads directly.

    Runs ``model`` once on ``spec``'s example with every integer input at its lowest value (0
    where undeclared, a valid id for any embedding), and matches each embedding's index tensor
    to the input whose storage it shares, so views and reshapes of an input count too. An input
    that several embeddings read gets the smallest range. A TorchScript module's submodules are
    no ``nn.Embedding``: it yields nothing.
    """
    if not any(t.integer_data for t in spec.inputs):
        return {}
    lowest = tuple(
        dataclasses.replace(t, high=t.low + 1) if t.integer_data else t for t in spec.inputs
    )
    inputs = dataclasses.replace(spec, inputs=lowest).example()
    storages = {
        x.untyped_storage().data_ptr(): t.name
        for t, x in zip(spec.inputs, inputs, strict=True)
        if t.integer_data
    }
    rows: dict[str, int] = {}

    def note_reader(embedding: nn.Embedding, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs.get("input")
        name = storages.get(ids.untyped_storage().data_ptr()) if torch.is_tensor(ids) else None
        if name is not None:
            rows[name] = min(rows.get(name, embedding.num_embeddings), embedding.num_embeddings)

    hooks = [
        sub.register_forward_pre_hook(note_reader, with_kwargs=True)
        for sub in model.modules()
        if isinstance(sub, nn.Embedding)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (0, size) for name, size in rows.items()}


def with_value_ranges(spec: ModelSpec, ranges: dict[str, tuple[int, int]]) -> ModelSpec:
    """``spec`` with the inputs named in ``ranges`` drawn from ``[low, high)``."""
    inputs = tuple(
        dataclasses.replace(t, low=ranges[t.name][0], high=ranges[t.name][1])
        if t.name in ranges
        else t
        for t in spec.inputs
    )
    return dataclasses.replace(spec, inputs=inputs)


def infer_value_ranges(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """``spec`` with each undeclared integer range taken from the embedding reading the input.

    Validation on a guessed range would check almost nothing (ids 0 and 1 of a 32000-row
    embedding), so an integer input that no embedding reads directly must declare its range:
    an :class:`ExportError` says so.
    """
    missing = [t for t in spec.inputs if t.integer_data and t.high is None]
    if not missing:
        return spec
    found = embedding_ranges(model, spec)
    for tensor in missing:
        if tensor.name not in found:
            raise ExportError(
                f"integer input {tensor.name!r} is declared without a value range, and no "
                "nn.Embedding of the model reads it directly: declare the range its values "
                f"take, e.g. --input {tensor.name}:{','.join(map(str, tensor.dims))}:"
                f"{tensor.dtype}:0..1000"
            )
    return with_value_ranges(spec, {t.name: found[t.name] for t in missing})
