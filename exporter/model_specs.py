"""How each kind of model is exported: the module to trace and its :class:`ModelSpec`.

Model classes with known inputs register a spec builder (:func:`register_spec`): the reference
models of :mod:`favor.ops.models` need no declarations, and an importer adds its model classes
the same way. Any other module is exported from its ``--input`` declarations, with its outputs
flattened into a tuple.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from favor.ops import FavorAttention
from favor.ops.models import PerformerEncoder, PerformerLM
from favor.runtime.contract import ModelKind

from .errors import ExportError
from .specs import ModelSpec, StateSpec, TensorSpec, declared_spec, infer_value_ranges


# Wrappers keep the user's model as ``.model``, so error messages can name submodules by the
# paths the user knows (``blocks.0.attn`` rather than ``model.blocks.0.attn``).
class LMStep(nn.Module):
    """``(tokens, offsets, kv_0, ...) -> (logits, new_offsets, new_kv_0, ...)``.

    One graph for prompt prefill (``seq`` tokens) and decode (``seq = 1``): the state of a
    :class:`PerformerLM` becomes plain, constant-size graph inputs and outputs.
    """

    def __init__(self, lm: PerformerLM) -> None:
        super().__init__()
        self.model = lm

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor, *layers: torch.Tensor):
        logits, state = self.model(tokens, (offsets, *layers), return_state=True)
        return (logits, *state)


class FlatOutputs(nn.Module):
    """Any module, with its output (a tensor or a tuple/list of them) flattened to a tuple."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.model = module

    def forward(self, *inputs: torch.Tensor):
        return flatten_outputs(self.model(*inputs))


def flatten_outputs(result: object) -> tuple[torch.Tensor, ...]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return tuple(result)
    raise ExportError(
        f"the model's forward returns {type(result).__name__}; export needs a tensor or a "
        "tuple of tensors"
    )


@dataclass(frozen=True)
class SpecBuilder:
    """How a registered model class is exported: ``spec(model)`` describes the module that
    ``wrap(model)`` returns, whose call takes the spec's inputs in order."""

    spec: Callable[[nn.Module], ModelSpec]
    wrap: Callable[[nn.Module], nn.Module]


SPEC_REGISTRY: dict[type[nn.Module], SpecBuilder] = {}


def register_spec(
    model_class: type[nn.Module], *, wrap: Callable[[nn.Module], nn.Module] = lambda m: m
) -> Callable[[Callable[[nn.Module], ModelSpec]], Callable[[nn.Module], ModelSpec]]:
    """Decorator: the decorated ``spec(model) -> ModelSpec`` describes ``model_class`` (and its
    subclasses), exported as ``wrap(model)``."""

    def decorate(spec: Callable[[nn.Module], ModelSpec]) -> Callable[[nn.Module], ModelSpec]:
        SPEC_REGISTRY[model_class] = SpecBuilder(spec, wrap)
        return spec

    return decorate


def spec_builder(model: nn.Module) -> SpecBuilder | None:
    """The builder registered for ``model``'s class or its nearest registered base class."""
    return next((SPEC_REGISTRY[c] for c in type(model).__mro__ if c in SPEC_REGISTRY), None)


def sequence_sweep(
    chunk: int, example: int, limit: int | None = None
) -> tuple[dict[str, int], ...]:
    """The validation cases of a sequence model traced at ``example`` tokens: length 1
    (decode), a length that is not a multiple of the chunk, one that is, and one longer than
    the example; each would expose a shape baked into the graph. ``limit`` caps the lengths,
    for models with a largest position."""
    cap = (lambda n: n) if limit is None else (lambda n: min(n, limit))
    return (
        {"batch": 1, "seq": 1},
        {"batch": 3, "seq": cap(chunk + 3)},
        {"batch": 2, "seq": cap(2 * chunk)},
        {"batch": 1, "seq": cap(example + chunk + 2)},
    )


@register_spec(PerformerLM, wrap=lambda lm: LMStep(lm).eval())
def lm_spec(lm: nn.Module, max_length: int | None = None) -> ModelSpec:
    """``tokens, state.offsets, state.0, ...`` -> ``logits, new_state.offsets, new_state.0, ...``
    for a causal LM called as :class:`PerformerLM` is (``lm(tokens, state, return_state=True)``,
    with ``lm.vocab_size``, ``lm.config()["chunk_size"]`` and ``lm.initial_state``). The state
    entries are the model's own initial state, batch-symbolic. ``max_length`` caps the traced
    and validated lengths."""
    chunk = lm.config()["chunk_size"]
    # Traced at most half the longest length: describing the outputs runs a few tokens more.
    seq = 2 * chunk + 5 if max_length is None else min(2 * chunk + 5, max_length // 2)
    example = {"batch": 2, "seq": seq}
    offsets, *layers = lm.initial_state(1)
    carried = {"offsets": offsets, **{str(i): layer for i, layer in enumerate(layers)}}
    inputs = [TensorSpec("tokens", ("batch", "seq"), "int64", high=lm.vocab_size)]
    inputs += [
        TensorSpec(f"state.{key}", ("batch", *t.shape[1:]), _dtype_name(t), sampler="zeros")
        for key, t in carried.items()
    ]
    states = [StateSpec(f"state.{key}", f"new_state.{key}") for key in carried]
    return ModelSpec(
        ModelKind.CAUSAL_LM, tuple(inputs), ("logits", *(s.output for s in states)), example,
        sequence_sweep(chunk, seq, max_length), states=tuple(states), sequence_dim="seq",
        chunk_size=chunk, max_length=max_length,
    )  # fmt: skip


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


@register_spec(PerformerEncoder, wrap=lambda encoder: encoder.eval())
def encoder_spec(encoder: PerformerEncoder) -> ModelSpec:
    """``tokens, key_padding_mask`` -> ``logits`` (with a classifier head) or ``hidden``."""
    config = encoder.config()
    chunk = config["chunk_size"]
    example = {"batch": 2, "seq": 2 * chunk + 5}
    inputs = (
        TensorSpec("tokens", ("batch", "seq"), "int64", high=config["vocab_size"]),
        TensorSpec("key_padding_mask", ("batch", "seq"), "bool", sampler="padding-mask"),
    )
    output = "logits" if config["num_classes"] is not None else "hidden"
    return ModelSpec(
        ModelKind.ENCODER, inputs, (output,), example, sequence_sweep(chunk, example["seq"]),
        sequence_dim="seq", chunk_size=chunk,
    )  # fmt: skip


def fold_projections(model: nn.Module) -> nn.Module:
    """``model``, or a copy with every learnable projection folded into a constant.

    The user's model is left as it is: it may go on training.
    """
    learnable = [
        m
        for m in model.modules()
        if isinstance(m, FavorAttention) and m.learnable_projection is not None
    ]
    if not learnable:
        return model
    folded = copy.deepcopy(model)
    for sub in folded.modules():
        if isinstance(sub, FavorAttention):
            sub.fold_projection_()
    return folded


def traced_module(model: nn.Module) -> nn.Module:
    """The module export traces for ``model``: its registered wrapper, or for any other module
    one whose outputs are a flat tuple. Learnable projections are folded (a copy)."""
    if isinstance(model, torch.jit.ScriptModule):
        # A loaded TorchScript module cannot be traced from inside another module; torch's
        # exporters flatten its tuple outputs themselves.
        return model
    model = fold_projections(model)
    builder = spec_builder(model)
    return builder.wrap(model) if builder else FlatOutputs(model).eval()


def exportable(model: nn.Module, declared_inputs: list[str]) -> tuple[nn.Module, ModelSpec]:
    """The module to trace and its spec. Registered model classes take no ``declared_inputs``."""
    module = traced_module(model)
    builder = None if isinstance(model, torch.jit.ScriptModule) else spec_builder(model)
    if builder is not None:
        if declared_inputs:
            raise ExportError(f"{type(model).__name__} is a model with known inputs; drop --input")
        return module, builder.spec(model)
    probe = declared_spec(declared_inputs, ("output",))
    probe = infer_value_ranges(module, probe)
    outputs = run_example(module, probe)
    names = ("output",) if len(outputs) == 1 else tuple(f"output_{i}" for i in range(len(outputs)))
    return module, dataclasses.replace(probe, output_names=names)


def run_example(module: nn.Module, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    """``module``'s flat outputs on ``spec``'s example: an ExportError if its forward rejects
    inputs shaped as ``spec`` declares them."""
    try:
        with torch.no_grad():
            return flatten_outputs(module(*spec.example()))
    except ExportError:
        raise
    except Exception as error:  # the user's forward rejected the declared inputs
        raise ExportError(
            f"the model's forward failed on inputs shaped as declared by --input: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
