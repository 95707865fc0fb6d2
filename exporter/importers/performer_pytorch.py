"""performer-pytorch (PyPI ``performer-pytorch``): its ``PerformerLM``, ``Performer``, and user
modules holding its ``SelfAttention`` or ``FastAttention`` layers, rebuilt from
:mod:`favor.ops.performer_compat`.

The favor models mirror performer-pytorch's module tree, so its ``state_dict`` loads into them
unchanged (strictly: every weight is carried over, and nothing is left out). The constructor
arguments are read off the module; a configuration favor cannot reproduce is refused naming the
option. performer-pytorch is never imported here: its modules are recognized by their class's
module path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from favor.ops.performer_compat import (
    CompatAttention,
    CompatLM,
    CompatPerformer,
    SelfAttention,
)
from favor.runtime.contract import ModelKind, Sampler

from ..model_specs import LMStep, lm_spec, register_spec, sequence_sweep
from ..specs import ModelSpec, TensorSpec
from .base import Importer, ImportRefusedError, register_importer
from .fidelity import FidelityReport, measure, token_rows

PACKAGE = "performer_pytorch"
# Calibration rows: at most this many, each at most CALIBRATION_LENGTH tokens (or max_seq_len).
CALIBRATION_ROWS = 8
CALIBRATION_LENGTH = 512
# Random inputs for the fidelity check: batch 2 of this many tokens (or max_seq_len).
PROBE_LENGTH = 256


def _is(module: nn.Module, name: str) -> bool:
    """Whether ``module`` is exactly performer-pytorch's class ``name`` (not a subclass, whose
    forward may differ)."""
    cls = type(module)
    return cls.__module__.split(".")[0] == PACKAGE and cls.__name__ == name


def _refuse(option: str, value: object, why: str) -> ImportRefusedError:
    return ImportRefusedError(
        f"cannot import this performer-pytorch model: {option}={value!r} ({why}); export it "
        "unchanged with --no-import"
    )


def _check_layers(stack: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    """``(wrapper, SelfAttention, FeedForward)`` of each layer of a ``Performer``'s ``net``,
    after refusing what favor does not reproduce."""
    if type(stack.net).__name__ == "ReversibleSequence":
        raise _refuse("reversible", True, "reversible layers compute another network")
    layers = []
    for pair in stack.net.layers:
        wrapper, ff_wrapper = pair
        attention, ff = wrapper.fn, ff_wrapper.fn
        if _is(attention, "PreShiftTokens") or _is(ff, "PreShiftTokens"):
            raise _refuse("shift_tokens", True, "token shifting mixes neighbours in")
        if _is(attention, "CrossAttention"):
            raise _refuse("cross_attend", True, "cross-attention needs a context")
        _check_attention(attention)
        feed_forward = ff.fn  # performer's Chunk wraps the FeedForward
        if not isinstance(feed_forward.act, nn.GELU) or feed_forward.act.approximate != "none":
            raise _refuse("activation", repr(feed_forward.act), "only exact GELU is supported")
        layers.append((wrapper, attention, feed_forward))
    return layers


def _check_kernel(fast: nn.Module) -> None:
    relu = type(fast.kernel_fn) is nn.ReLU
    if fast.generalized_attention and not fast.no_projection and not relu:
        raise _refuse("kernel_fn", type(fast.kernel_fn).__name__, "only nn.ReLU")


def _stack_kwargs(stack: nn.Module) -> dict:
    """``Performer``'s constructor arguments, read off an instance."""
    layers = _check_layers(stack)
    wrapper, attention, feed_forward = layers[0]
    fast = attention.fast_attention
    dim = attention.to_q.in_features
    return {
        "dim": dim,
        "depth": len(layers),
        "heads": attention.heads,
        "dim_head": fast.dim_heads,
        "causal": bool(fast.causal),
        "ff_mult": feed_forward.w2.in_features // dim,
        "nb_features": fast.nb_features,
        "ff_chunks": stack.net.layers[0][1].fn.chunks,
        "generalized_attention": bool(fast.generalized_attention),
        "use_scalenorm": _is(wrapper, "PreScaleNorm"),
        "use_rezero": _is(wrapper, "ReZero"),
        "ff_glu": bool(feed_forward.glu),
        "no_projection": bool(fast.no_projection),
        "qkv_bias": attention.to_q.bias is not None,
        "attn_out_bias": attention.to_out.bias is not None,
    }


def _lm_kwargs(lm: nn.Module) -> dict:
    """``PerformerLM``'s constructor arguments, read off an instance."""
    if type(lm.pos_emb).__name__ == "AxialPositionalEmbedding":  # its own package's class
        raise _refuse("axial_position_emb", True, "use rotary or absolute positions")
    return {
        "num_tokens": lm.token_emb.num_embeddings,
        "max_seq_len": lm.max_seq_len,
        **_stack_kwargs(lm.performer),
        "tie_embed": lm.to_out is None,
        "rotary_position_emb": _is(lm.pos_emb, "FixedPositionalEmbedding"),
    }


def _loaded(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ImportRefusedError(
            f"the weights do not fit {what}: {' '.join(lines[1:3]) or lines[0]}"
        ) from None
    return model.eval()


class AttentionLayer(nn.Module):
    """A performer-pytorch ``SelfAttention`` layer, called as the original is, computed by
    favor's :class:`~favor.ops.performer_compat.SelfAttention`."""

    def __init__(self, layer: SelfAttention) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor | None = None,
        context: None = None,
        mask: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        """``x (B, N, dim)``, performer's ``pos_emb (1, N, dim_head)`` and ``mask (B, N)``."""
        if context is not None:
            raise ValueError("self-attention takes no context")
        return self.layer(x, pos_emb, mask)[0]


def _attention_layer(original: nn.Module) -> AttentionLayer:
    _check_attention(original)
    fast = original.fast_attention
    attention = _fast_attention(fast)
    layer = SelfAttention(
        original.to_q.in_features, original.heads, fast.dim_heads,
        qkv_bias=original.to_q.bias is not None, attn_out_bias=original.to_out.bias is not None,
        attention=attention,
    )  # fmt: skip
    return AttentionLayer(_loaded(layer, original.state_dict(), "favor's SelfAttention"))


def _fast_attention(fast: nn.Module) -> CompatAttention:
    _check_kernel(fast)
    feature_map = (
        "identity" if fast.no_projection else "relu" if fast.generalized_attention else "softmax"
    )
    attention = CompatAttention(
        fast.dim_heads, fast.nb_features, causal=bool(fast.causal), feature_map=feature_map
    )
    return _loaded(attention, fast.state_dict(), "favor's CompatAttention")


@register_importer
class PerformerPytorchImporter(Importer):
    """``PerformerLM`` -> :class:`~favor.ops.performer_compat.CompatLM`, ``Performer`` ->
    :class:`~favor.ops.performer_compat.CompatPerformer`, and in any other module each
    ``SelfAttention`` / ``FastAttention`` replaced by its favor equivalent."""

    name = "performer-pytorch"
    classes = ("performer_pytorch.PerformerLM", "performer_pytorch.Performer")

    def recognizes(self, module: nn.Module) -> bool:
        return any(
            _is(m, name)
            for m in module.modules()
            for name in ("PerformerLM", "Performer", "SelfAttention", "FastAttention")
        )

    def convert(self, module: nn.Module) -> nn.Module:
        if _is(module, "PerformerLM"):
            model = _loaded(CompatLM(**_lm_kwargs(module)), module.state_dict(), "CompatLM")
            return _with_key_shifts(model, None)
        if _is(module, "Performer"):
            model = CompatPerformer(**_stack_kwargs(module))
            return _loaded(model, module.state_dict(), "CompatPerformer")
        converted = copy.deepcopy(module)
        self._convert_children(converted)
        return converted.eval()

    def _convert_children(self, parent: nn.Module) -> None:
        """Replace each performer-pytorch child of ``parent`` by its favor equivalent; look
        inside the others."""
        for name, child in parent.named_children():
            if _is(child, "PerformerLM") or _is(child, "Performer"):
                setattr(parent, name, self.convert(child))
            elif _is(child, "SelfAttention"):
                setattr(parent, name, _attention_layer(child))
            elif _is(child, "FastAttention"):
                setattr(parent, name, _fast_attention(child))
            else:
                self._convert_children(child)

    def calibrate(self, original: nn.Module, imported: nn.Module, calibration: np.ndarray) -> None:
        if isinstance(imported, CompatLM):
            _with_key_shifts(imported, calibration)

    def from_state_dict(
        self, class_path: str, kwargs: Mapping[str, object], state_dict: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        build = CompatLM if class_path == "performer_pytorch.PerformerLM" else CompatPerformer
        try:
            model = build(**kwargs)
        except (TypeError, ValueError) as error:
            raise ImportRefusedError(
                f"cannot build {class_path} from --import-kwargs: {error}"
            ) from None
        model = _loaded(model, state_dict, class_path)
        return _with_key_shifts(model, None) if isinstance(model, CompatLM) else model

    def fidelity(
        self, original: nn.Module, imported: nn.Module, calibration: np.ndarray | None
    ) -> FidelityReport:
        if isinstance(imported, CompatLM):
            return _lm_fidelity(original, imported, calibration)
        report = FidelityReport(_path(original), _path(imported), exact=True)
        generator = torch.Generator().manual_seed(0)
        for name, before in _outermost(original):
            after = imported.get_submodule(name) if name else imported
            report.exact &= not _any_causal(before)
            label = name or "model"
            if _is(before, "FastAttention"):
                shape = (2, 2, 64, before.dim_heads)
                inputs = tuple(torch.randn(shape, generator=generator) for _ in range(3))
                label += f": random q, k, v {shape}"
            else:
                dim = _attention_layers(before)[0].to_q.in_features
                inputs = (torch.randn(2, 64, dim, generator=generator),)
                label += f": random x (2, 64, {dim})"
            report.measurements.append(measure(before, after, inputs, label, logits=False))
        return report


def _outermost(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The performer-pytorch layers of ``module`` that conversion replaces, by path: the
    outermost ones (a replaced Performer takes its layers along)."""
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        inside = any(not path or name.startswith(path + ".") for path, _ in found)
        kinds = ("Performer", "SelfAttention", "FastAttention")
        if not inside and any(_is(sub, kind) for kind in kinds):
            found.append((name, sub))
    return found


def _attention_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if _is(m, "SelfAttention")]


def _with_key_shifts(model: CompatLM, calibration: np.ndarray | None) -> CompatLM:
    """``model`` with its causal softmax key shifts measured (:meth:`CompatLM.fix_key_shifts`)
    on the calibration rows, or without data on the model's own probe tokens."""
    if model.causal:
        rows = (
            _probe_tokens(model) if calibration is None else _calibration_rows(model, calibration)
        )
        model.fix_key_shifts(rows)
    return model


def _probe_tokens(model: CompatLM) -> torch.Tensor:
    """Random token ids ``(2, min(max_seq_len, 256))``, the same for every import."""
    length = min(model.config()["max_seq_len"], PROBE_LENGTH)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.vocab_size, (2, length), generator=generator)


def _calibration_rows(model: CompatLM, ids: np.ndarray) -> torch.Tensor:
    length = min(model.config()["max_seq_len"], CALIBRATION_LENGTH, ids.size)
    return token_rows(ids, length, CALIBRATION_ROWS)


def _check_attention(attention: nn.Module) -> None:
    """Refuse a SelfAttention layer favor does not reproduce: local heads, or its kernel."""
    if attention.local_attn is not None:
        local = attention.heads - attention.global_heads
        raise _refuse("local_attn_heads", local, "windowed softmax heads keep no fixed state")
    _check_kernel(attention.fast_attention)


def _any_causal(module: nn.Module) -> bool:
    return any(_is(m, "FastAttention") and m.causal for m in module.modules())


def _path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _lm_fidelity(
    original: nn.Module, imported: CompatLM, calibration: np.ndarray | None
) -> FidelityReport:
    """Logits on random tokens (with a mask when bidirectional), and on the calibration data:
    top-1 agreement and next-token NLL for causal models."""
    report = FidelityReport(_path(original), _path(imported), exact=not imported.causal)
    tokens = _probe_tokens(imported)
    length = tokens.shape[1]
    report.measurements.append(
        measure(original, imported, (tokens,), f"random tokens (2, {length})", logits=True)
    )
    if not imported.causal:
        mask = torch.arange(length) < torch.tensor([[length], [length // 2 + 1]])
        label = f"random tokens (2, {length}), masked"
        report.measurements.append(
            measure(original, imported, (tokens, mask), label, logits=True, call=_with_mask)
        )
    if calibration is not None:
        rows = _calibration_rows(imported, calibration)
        label = f"calibration data ({rows.shape[0]} x {rows.shape[1]})"
        targets = rows[:, 1:] if imported.causal else None
        report.measurements.append(
            measure(original, imported, (rows,), label, logits=True, next_token_targets=targets)
        )
    return report


def _with_mask(model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    tokens, mask = inputs
    return model(tokens, mask=mask)


# --- how the imported models export ---------------------------------------------------------


class MaskCall(nn.Module):
    """A bidirectional :class:`CompatLM` called with its ``mask`` positionally (True at real
    tokens, performer's own), as export calls modules."""

    def __init__(self, model: CompatLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, mask=mask)


def _lm_wrap(model: CompatLM) -> nn.Module:
    return LMStep(model).eval() if model.causal else MaskCall(model).eval()


def _mask() -> TensorSpec:
    return TensorSpec("mask", ("batch", "seq"), "bool", sampler=Sampler.KEEP_MASK)


@register_spec(CompatLM, wrap=_lm_wrap)
def compat_lm_spec(model: CompatLM) -> ModelSpec:
    """A causal model exports as favor's stateful causal LM; a bidirectional one as a module of
    performer's own inputs, ``tokens`` and ``mask`` (True at real tokens)."""
    config = model.config()
    if model.causal:
        return lm_spec(model, config["max_seq_len"])
    chunk, limit = config["chunk_size"], config["max_seq_len"]
    example = {"batch": 2, "seq": min(2 * chunk + 5, limit // 2)}
    inputs = (TensorSpec("tokens", ("batch", "seq"), "int64", high=model.vocab_size), _mask())
    return ModelSpec(
        ModelKind.MODULE, inputs, ("logits",), example,
        sequence_sweep(chunk, example["seq"], limit), sequence_dim="seq", chunk_size=chunk,
        max_length=limit,
    )  # fmt: skip


@register_spec(CompatPerformer, wrap=lambda model: model.eval())
def compat_stack_spec(model: CompatPerformer) -> ModelSpec:
    """``x (batch, seq, dim)`` float32, and performer's ``mask`` when bidirectional ->
    ``hidden``."""
    config = model.config()
    chunk, dim = config["chunk_size"], config["dim"]
    inputs = [TensorSpec("x", ("batch", "seq", dim), "float32")]
    if not model.causal:
        inputs.append(_mask())
    example = {"batch": 2, "seq": 2 * chunk + 5}
    return ModelSpec(
        ModelKind.MODULE, tuple(inputs), ("hidden",), example,
        sequence_sweep(chunk, example["seq"]), sequence_dim="seq", chunk_size=chunk,
    )  # fmt: skip
