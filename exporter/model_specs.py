"""How each kind of model is exported: the module to trace and its :class:`ModelSpec`.

The reference models of :mod:`favor.ops.models` need no declarations. Any other module is
exported from its ``--input`` declarations, with its outputs flattened into a tuple.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from favor.ops import FavorAttention
from favor.ops.models import PerformerEncoder, PerformerLM

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


def _sequence_sweep(chunk: int, example: int) -> tuple[dict[str, int], ...]:
    # Length 1 (decode), a length that is not a multiple of the chunk, one that is, and one
    # longer than the traced example: each would expose a shape baked into the graph.
    return (
        {"batch": 1, "seq": 1},
        {"batch": 3, "seq": chunk + 3},
        {"batch": 2, "seq": 2 * chunk},
        {"batch": 1, "seq": example + chunk + 2},
    )


def lm_spec(lm: PerformerLM) -> ModelSpec:
    config = lm.config()
    chunk = config["chunk_size"]
    example = {"batch": 2, "seq": 2 * chunk + 5}
    inputs = [TensorSpec("tokens", ("batch", "seq"), "int64", high=config["vocab_size"])]
    inputs.append(TensorSpec("state.offsets", ("batch",), "int64", sampler="zeros"))
    outputs = ["logits", "new_state.offsets"]
    states = [StateSpec("state.offsets", "new_state.offsets")]
    for i, block in enumerate(lm.blocks):
        attention = block.attn.attention
        dims = ("batch", block.attn.num_heads, attention.feature_dim, block.attn.head_dim + 1)
        inputs.append(TensorSpec(f"state.{i}", dims, "float32", sampler="zeros"))
        outputs.append(f"new_state.{i}")
        states.append(StateSpec(f"state.{i}", f"new_state.{i}"))
    return ModelSpec(
        "causal-lm", tuple(inputs), tuple(outputs), example, _sequence_sweep(chunk, example["seq"]),
        states=tuple(states), sequence_dim="seq", chunk_size=chunk,
    )  # fmt: skip


def encoder_spec(encoder: PerformerEncoder) -> ModelSpec:
    config = encoder.config()
    chunk = config["chunk_size"]
    example = {"batch": 2, "seq": 2 * chunk + 5}
    inputs = (
        TensorSpec("tokens", ("batch", "seq"), "int64", high=config["vocab_size"]),
        TensorSpec("key_padding_mask", ("batch", "seq"), "bool", sampler="padding-mask"),
    )
    output = "logits" if config["num_classes"] is not None else "hidden"
    return ModelSpec(
        "encoder", inputs, (output,), example, _sequence_sweep(chunk, example["seq"]),
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


def exportable(model: nn.Module, declared_inputs: list[str]) -> tuple[nn.Module, ModelSpec]:
    """The module to trace and its spec. Reference models take no ``declared_inputs``."""
    if not isinstance(model, torch.jit.ScriptModule):
        model = fold_projections(model)
    if declared_inputs and isinstance(model, (PerformerLM, PerformerEncoder)):
        raise ExportError(
            f"{type(model).__name__} is a reference model with known inputs; drop --input"
        )
    if isinstance(model, PerformerLM):
        return LMStep(model).eval(), lm_spec(model)
    if isinstance(model, PerformerEncoder):
        return model.eval(), encoder_spec(model)
    # A loaded TorchScript module cannot be traced from inside another module; torch's
    # exporters flatten its tuple outputs themselves.
    wrapped = model if isinstance(model, torch.jit.ScriptModule) else FlatOutputs(model).eval()
    probe = declared_spec(declared_inputs, ("output",))
    try:
        with torch.no_grad():
            probe = infer_value_ranges(wrapped, probe)
            outputs = flatten_outputs(wrapped(*probe.example()))
    except ExportError:
        raise
    except Exception as error:  # the user's forward rejected the declared inputs
        raise ExportError(
            f"the model's forward failed on inputs shaped as declared by --input: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    names = ("output",) if len(outputs) == 1 else tuple(f"output_{i}" for i in range(len(outputs)))
    return wrapped, dataclasses.replace(probe, output_names=names)
