"""Models with performer-pytorch's architecture, so that its trained models run on favor.ops.

lucidrains' performer-pytorch (``Performer``, ``PerformerLM``) is where most trained Performers
come from. :class:`CompatPerformer` and :class:`CompatLM` compute what its classes compute, with
:class:`CompatAttention` in place of its ``FastAttention``: causal attention then runs as
favor.ops' chunked prefix sums with a constant-size carried state, reads no future token, and
exports like every other :class:`~favor.ops.attention.FavorAttention`.

The module tree has performer-pytorch's names (``token_emb``, ``performer.net.layers.0.0.fn.to_q``,
``performer.proj_updater.calls_since_last_redraw``, ...) for every configuration supported here,
so ``model.load_state_dict(original.state_dict(), strict=True)`` carries every weight over.
Options are performer-pytorch's, with its names and defaults, plus ``chunk_size``; options that
change the maths in ways favor.ops does not reproduce raise a ValueError naming the option.
Dropout, projection redraws and ``ff_chunks`` only matter in training or for memory: they are
accepted, recorded in :meth:`config` and otherwise ignored.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import FavorAttention
from .checks import check_choice, check_positive_int, tracing
from .numerics import compute_dtype

LMState = tuple[torch.Tensor, ...]

FEATURE_MAPS = ("softmax", "relu", "identity")
# performer-pytorch's constants: softmax_kernel's eps and generalized_kernel's kernel_epsilon.
SOFTMAX_EPS = 1e-4
RELU_EPS = 1e-3


def default_nb_features(dim_head: int) -> int:
    """performer-pytorch's default number of random features: ``int(d ln d)``."""
    return int(dim_head * math.log(dim_head))


def _half_sq_norm(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(dim=-1, keepdim=True)


class CompatAttention(FavorAttention):
    """:class:`FavorAttention` with performer-pytorch's feature maps: ``(B, H, N, D)`` in and out.

    Everything but the feature maps is inherited: the chunked causal contraction, the carried
    state ``(B, H, M', Dv + 1)``, :meth:`step`, the fused export path. ``feature_map`` chooses
    performer-pytorch's attention (queries and keys scaled by ``D**-0.25`` first, except for
    ``identity``; ``W`` is the ``(M, D)`` projection buffer, performer's ``projection_matrix``):

    * ``"softmax"`` (performer's default, ``softmax_kernel``). Bidirectional it is exactly
      performer's map: query ``exp(x.w_i - |x|^2/2 - max_j x.w_j) + eps``, key
      ``exp(y.w_i - |y|^2/2 - max over the sequence and features of y.w) + eps``. performer also
      multiplies both by ``M**-0.5``, which cancels between numerator and denominator and is left
      out. That key shift reads every key of the sequence, the future included, so causal
      attention uses shifts of each token alone: key ``exp(y.w_i - |y|^2/2 - |w_i|^2/2) + eps``
      (at most ``1 + eps``) and query ``exp(x.w_i - |x|^2/2 - max_j x.w_j) *
      exp(|w_i|^2/2 - max_j |w_j|^2/2) + eps``. The product of the exponential parts differs from
      performer's by one factor per (batch, head), which cancels in the attention ratio: only
      the ``eps`` terms weigh differently, and reproducing performer's would mean reading the
      future. Causal softmax therefore approximates performer's outputs closely but not exactly.
    * ``"relu"`` (``generalized_attention=True`` with ``nn.ReLU``): ``relu(x W^T) + relu_eps``
      on both sides. Exact, causal or not.
    * ``"identity"`` (``no_projection=True``): queries softmax over the head dim of the
      unscaled ``q``; keys softmax over the sequence of the unscaled ``k``, or ``exp(k)`` when
      causal (unbounded, as in performer). ``M' = D``; the projection buffer stays (performer
      saves one) but is unused. Exact.

    performer's causal denominator adds ``1e-6`` to the running key sum; this one does not, so
    causal outputs differ from performer's by that much relative to the denominator.

    A ``key_padding_mask`` leaves padded keys out of the sequence-wide normalizations too, so
    padded keys contribute nothing. (performer's models mask values only; :class:`CompatLM`
    does the same and passes no mask here.) Bidirectional ``softmax`` and ``identity``
    normalize keys over each call's sequence, so they carry no state between calls.
    """

    CONFIG = (
        "dim_head",
        "nb_features",
        "causal",
        "feature_map",
        "seed",
        "chunk_size",
        "softmax_eps",
        "relu_eps",
    )

    def __init__(
        self,
        dim_head: int,
        nb_features: int | None = None,
        *,
        causal: bool = False,
        feature_map: str = "softmax",
        seed: int = 0,
        chunk_size: int = 64,
        softmax_eps: float = SOFTMAX_EPS,
        relu_eps: float = RELU_EPS,
    ) -> None:
        check_choice("feature_map", feature_map, FEATURE_MAPS)
        if nb_features is None:
            nb_features = default_nb_features(check_positive_int("dim_head", dim_head))
        # performer's projection is FavorAttention's "orf" with chi norms. The registered kernel
        # closest to each map is what FavorAttention's own logic (denominator, state) reads.
        super().__init__(
            dim_head,
            nb_features,
            causal=causal,
            kernel="relu" if feature_map == "relu" else "posrf",
            projection="orf",
            seed=seed,
            chunk_size=chunk_size,
            orf_norm="chi",
        )
        self.feature_map = feature_map
        self.softmax_eps = float(softmax_eps)
        self.relu_eps = float(relu_eps)
        # Causal softmax: the key shift per head, (H,), standing for performer's sequence-wide
        # key maximum; empty until set_key_shift() (then each key's own |w_i|^2/2 is used).
        self.register_buffer("key_shift", torch.zeros(0))

    @property
    def fixed_key_shift(self) -> bool:
        """Whether causal softmax keys take a fixed shift (:meth:`set_key_shift`)."""
        # The buffer's size, read from its shape: a Python int even while tracing.
        return bool(self.key_shift.shape[0])

    def set_key_shift(self, shift: torch.Tensor) -> None:
        """Fix causal softmax's key shift: ``shift (H,)``, one per head, typically performer's
        sequence-wide key maximum ``max over n, i of y_n.w_i`` averaged over real data.

        Keys then get performer's own map with that constant in place of the maximum,
        ``exp(y.w_i - |y|^2/2 - shift) + eps``, and queries performer's exactly: wherever a
        sequence's maximum equals the shift, the outputs are performer's, eps terms included,
        and nothing reads the future.
        """
        if not (self.causal and self.feature_map == "softmax"):
            raise ValueError("a fixed key shift is for causal softmax attention")
        self.key_shift = shift.detach().to(torch.float32).reshape(-1).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # performer's state_dicts have no key shift, and a saved one may have any head count.
        key = prefix + "key_shift"
        if key in state_dict:
            self.key_shift = state_dict[key].detach().clone()
        else:
            state_dict[key] = self.key_shift
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def feature_dim(self) -> int:
        """``M'``: ``dim_head`` for ``identity``, else ``nb_features``."""
        return self.dim_head if self.feature_map == "identity" else self.nb_features

    def _check_state_is_consistent(self) -> None:
        if not self.causal and self.feature_map != "relu":
            raise ValueError(
                f"bidirectional {self.feature_map!r} attention normalizes keys over each call's "
                "sequence, so a state carried between calls would mix normalizations"
            )
        super()._check_state_is_consistent()

    def feature_maps(
        self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q, k (..., D) -> (..., M')`` in the compute dtype; see the class docstring."""
        if self.feature_map == "identity":
            dtype = compute_dtype(q.dtype)
            phi_q = q.to(dtype).softmax(dim=-1)
            k = k.to(dtype)
            if self.causal:
                return phi_q, torch.exp(k)
            return phi_q, _without_padding(k, key_padding_mask).softmax(dim=-2)
        x, y = self._scaled(q, k)
        w = self.projection_weights().to(x.dtype)
        x_w, y_w = x @ w.T, y @ w.T
        if self.feature_map == "relu":
            return torch.relu(x_w) + self.relu_eps, torch.relu(y_w) + self.relu_eps
        query_logits = x_w - _half_sq_norm(x) - x_w.amax(dim=-1, keepdim=True).detach()
        key_logits = y_w - _half_sq_norm(y)
        if self.causal and self.fixed_key_shift:
            key_logits = key_logits - self.key_shift.to(x.dtype)[:, None, None]
        elif self.causal:
            w_half_sq = _half_sq_norm(w).T  # (1, M)
            query_logits = query_logits + (w_half_sq - w_half_sq.amax(dim=-1, keepdim=True))
            key_logits = key_logits - w_half_sq
        else:
            shift = _without_padding(y_w, key_padding_mask).amax(dim=(-1, -2), keepdim=True)
            key_logits = key_logits - shift.detach()
        return torch.exp(query_logits) + self.softmax_eps, torch.exp(key_logits) + self.softmax_eps


def _without_padding(t: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """``t (B, H, N, F)`` with padded positions at -inf, out of sequence-wide max and softmax."""
    if key_padding_mask is None:
        return t
    return t.masked_fill(key_padding_mask[:, None, :, None], -math.inf)


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """Pairs ``(x_{2i}, x_{2i+1}) -> (-x_{2i+1}, x_{2i})``: a quarter turn of each pair."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).reshape(x.shape)


def apply_rotary(x: torch.Tensor, sinusoid: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (B, H, N, D)`` by ``sinusoid (B, N, D)`` rows ``[sin | cos]``, pair by pair.

    performer-pytorch's convention: pair ``(x_{2i}, x_{2i+1})`` turns by the angle of column
    ``i`` of each half, so each half's columns are repeated twice, interleaved.
    """
    width = sinusoid.shape[-1] // 2
    sin, cos = (
        torch.stack((half, half), dim=-1).reshape(sinusoid.shape).unsqueeze(1)
        for half in _halves(sinusoid, width)
    )
    return x * cos + _rotate_every_two(x) * sin


def _halves(x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[..., :width]`` and ``x[..., width:]``.

    Slices rather than ``chunk``: the dynamo ONNX exporter writes ``chunk`` as an opset-18
    ``Split`` that the conversion down to opset 17, the export default, leaves invalid.
    """
    return x[..., :width], x[..., width:]


class SinusoidPositions(nn.Module):
    """performer's ``FixedPositionalEmbedding``: buffer ``emb (max_seq_len, dim)`` ``[sin | cos]``.

    Saved in the state_dict, as performer saves it.
    """

    emb: torch.Tensor

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        inv_freq = 10000.0 ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1) * inv_freq
        self.register_buffer("emb", torch.cat([angles.sin(), angles.cos()], -1).float())

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions (B, N)`` integer -> ``(B, N, dim)``."""
        return self.emb[positions]


class LearnedPositions(nn.Module):
    """performer's ``AbsolutePositionalEmbedding``: a trained ``emb (max_seq_len, dim)``."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions (B, N)`` integer -> ``(B, N, dim)``."""
        return self.emb(positions)


class SelfAttention(nn.Module):
    """performer's ``SelfAttention`` on ``(B, N, dim)``, with :class:`CompatAttention` inside."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        *,
        qkv_bias: bool,
        attn_out_bias: bool,
        attention: CompatAttention,
    ) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.fast_attention = attention
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim, bias=attn_out_bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # Sizes read off x, not unflatten(): the TorchScript ONNX exporter would fix the batch.
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        sinusoid: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, N, dim)`` -> ``(out (B, N, dim), new_state or None)``.

        ``sinusoid (B, N, dim_head)`` rotates queries and keys; ``mask (B, N)`` (True = real
        token) zeroes the values of the other positions, which stay in the denominator, as in
        performer. Causal layers take and return ``state (B, heads, M', dim_head + 1)``.
        """
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(x))
        if mask is not None:
            v = v.masked_fill(~mask[:, None, :, None], 0.0)
        if sinusoid is not None:
            q, k = apply_rotary(q, sinusoid), apply_rotary(k, sinusoid)
        if self.fast_attention.causal:
            out, state = self.fast_attention(q, k, v, state=state, return_state=True)
        else:
            out = self.fast_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)), state


class FeedForward(nn.Module):
    """performer's ``FeedForward``: ``w2(gelu(w1 x))``, or ``w2(gelu(a) * b)`` with ``glu``."""

    def __init__(self, dim: int, mult: int, *, glu: bool) -> None:
        super().__init__()
        self.glu = glu
        self.w1 = nn.Linear(dim, dim * mult * (2 if glu else 1))
        self.act = nn.GELU()
        self.w2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        if not self.glu:
            return self.w2(self.act(self.w1(x)))
        gate, value = _halves(self.w1(x), self.w2.in_features)
        return self.w2(self.act(gate) * value)


class Chunk(nn.Module):
    """performer's ``Chunk`` around the feed-forward, which gives it the ``fn.fn`` names.

    performer feeds ``ff_chunks`` groups of tokens in turn to bound memory; the feed-forward
    acts on each token alone, so one pass over all of them is the same.
    """

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Residual(nn.Module):
    """A sublayer ``fn`` of a residual branch ``x + scale(fn(normalize(x), ...))``.

    The base class is the identity on both sides; performer's wrappers override one of them.
    """

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        return y


class PreLayerNorm(Residual):
    """performer's default wrapper: ``LayerNorm`` before the sublayer."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__(fn)
        self.norm = nn.LayerNorm(dim)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class PreScaleNorm(Residual):
    """``use_scalenorm``: ``g x / max(|x|, eps)`` before the sublayer, one trained ``g``."""

    def __init__(self, fn: nn.Module, eps: float = 1e-5) -> None:
        super().__init__(fn)
        self.g = nn.Parameter(torch.ones(1))
        self.eps = eps

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=self.eps)
        return x / norm * self.g


class ReZero(Residual):
    """``use_rezero``: no norm; the sublayer's output times a trained scalar ``g``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__(fn)
        self.g = nn.Parameter(torch.tensor(1e-3))

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.g


class LayerStack(nn.Module):
    """performer's ``SequentialSequence``: ``layers`` of ``[attention, feed-forward]`` pairs."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(
        self,
        x: torch.Tensor,
        *,
        sinusoid: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        states: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """``x (B, N, dim)`` -> ``(x, new_states)``: one state per layer, None when bidirectional.

        ``sinusoid`` and ``mask`` reach the attention sublayers only, as in performer.
        """
        states = states if states is not None else (None,) * len(self.layers)
        new_states = []
        for (attn, ff), state in zip(self.layers, states, strict=True):
            out, state = attn.fn(attn.normalize(x), sinusoid, mask, state)
            x = x + attn.scale(out)
            x = x + ff.scale(ff.fn(ff.normalize(x)))
            new_states.append(state)
        return x, new_states


class RedrawCounter(nn.Module):
    """Stands for performer's ``ProjectionUpdater``: its counter buffer, and ``instance``, the
    layer stack again under a second name, because performer's state_dict holds both.

    Nothing is redrawn: projections stay as loaded.
    """

    calls_since_last_redraw: torch.Tensor

    def __init__(self, instance: LayerStack) -> None:
        super().__init__()
        self.instance = instance
        self.register_buffer("calls_since_last_redraw", torch.tensor(0))


def _unsupported(option: str, value: object, why: str) -> ValueError:
    return ValueError(
        f"{option}={value!r} is not supported: {why}. favor.ops reproduces performer-pytorch "
        "models without it"
    )


def _check_stack_options(
    local_attn_heads: int | tuple[int, ...],
    reversible: bool,
    cross_attend: bool,
    shift_tokens: bool,
) -> None:
    heads = local_attn_heads if isinstance(local_attn_heads, (tuple, list)) else (local_attn_heads,)
    if any(heads):
        raise _unsupported(
            "local_attn_heads", local_attn_heads, "local windowed softmax heads are not FAVOR"
        )
    if reversible:
        raise _unsupported("reversible", reversible, "reversible layers compute another network")
    if cross_attend:
        raise _unsupported("cross_attend", cross_attend, "cross-attention needs a context")
    if shift_tokens:
        raise _unsupported("shift_tokens", shift_tokens, "token shifting mixes neighbours in")


class CompatPerformer(nn.Module):
    """performer-pytorch's ``Performer`` stack: ``x (B, N, dim)`` -> ``(B, N, dim)``.

    The keywords are ``Performer``'s, with its defaults (``qkv_bias=True`` and
    ``attn_out_bias=True`` here), plus ``chunk_size`` for causal attention. Attention follows
    performer: ``no_projection`` gives the ``identity`` map, else ``generalized_attention`` the
    ``relu`` map, else ``softmax`` (see :class:`CompatAttention`). Layer ``i``'s projection is
    drawn from seed ``i`` until weights are loaded over it. Called alone, like performer's, the
    stack gets no positions.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int | None,
        *,
        local_attn_heads: int | tuple[int, ...] = 0,
        local_window_size: int = 256,
        causal: bool = False,
        ff_mult: int = 4,
        nb_features: int | None = None,
        feature_redraw_interval: int | None = 1000,
        reversible: bool = False,
        ff_chunks: int = 1,
        generalized_attention: bool = False,
        use_scalenorm: bool = False,
        use_rezero: bool = False,
        ff_glu: bool = False,
        ff_dropout: float = 0.0,
        attn_dropout: float = 0.0,
        cross_attend: bool = False,
        no_projection: bool = False,
        auto_check_redraw: bool = True,
        qkv_bias: bool = True,
        attn_out_bias: bool = True,
        shift_tokens: bool = False,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        del local_window_size  # sizes local heads only, which are rejected
        _check_stack_options(local_attn_heads, reversible, cross_attend, shift_tokens)
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads)):
            check_positive_int(name, value)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        dim_head = dim // heads if dim_head is None else check_positive_int("dim_head", dim_head)
        nb_features = default_nb_features(dim_head) if nb_features is None else nb_features
        feature_map = (
            "identity" if no_projection else "relu" if generalized_attention else "softmax"
        )
        self._config = {
            "dim": dim, "depth": depth, "heads": heads, "dim_head": dim_head, "causal": bool(causal),
            "ff_mult": check_positive_int("ff_mult", ff_mult), "nb_features": nb_features,
            "feature_redraw_interval": feature_redraw_interval, "ff_chunks": ff_chunks,
            "generalized_attention": bool(generalized_attention),
            "use_scalenorm": bool(use_scalenorm), "use_rezero": bool(use_rezero),
            "ff_glu": bool(ff_glu), "ff_dropout": ff_dropout, "attn_dropout": attn_dropout,
            "no_projection": bool(no_projection), "auto_check_redraw": bool(auto_check_redraw),
            "qkv_bias": bool(qkv_bias), "attn_out_bias": bool(attn_out_bias),
            "chunk_size": check_positive_int("chunk_size", chunk_size),
        }  # fmt: skip

        def wrap(fn: nn.Module) -> Residual:
            # performer's precedence: scale norm, else rezero, else layer norm.
            if use_scalenorm:
                return PreScaleNorm(fn)
            return ReZero(fn) if use_rezero else PreLayerNorm(dim, fn)

        def layer(index: int) -> nn.ModuleList:
            attention = CompatAttention(
                dim_head, nb_features, causal=bool(causal), feature_map=feature_map,
                seed=index, chunk_size=chunk_size,
            )  # fmt: skip
            attn = SelfAttention(
                dim, heads, dim_head, qkv_bias=qkv_bias, attn_out_bias=attn_out_bias,
                attention=attention,
            )  # fmt: skip
            ff = Chunk(FeedForward(dim, ff_mult, glu=bool(ff_glu)))
            return nn.ModuleList([wrap(attn), wrap(ff)])

        self.net = LayerStack(nn.ModuleList(layer(i) for i in range(depth)))
        self.proj_updater = RedrawCounter(self.net)

    def config(self) -> dict:
        """Constructor arguments, JSON-ready: ``type(m)(**m.config())`` rebuilds the model."""
        return dict(self._config)

    @property
    def causal(self) -> bool:
        """Whether every layer attends only to earlier tokens."""
        return self._config["causal"]

    def attention_layers(self) -> list[CompatAttention]:
        """Each layer's :class:`CompatAttention`, in order."""
        return [attn.fn.fast_attention for attn, _ in self.net.layers]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, dim)``, ``mask (B, N)`` (True = real token) -> ``(B, N, dim)``."""
        _check_mask(mask, x.shape[:2])
        return self.net(x, mask=mask)[0]


def _check_mask(mask: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if mask is None or tracing():
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != shape:
        got = (mask.dtype, tuple(mask.shape)) if isinstance(mask, torch.Tensor) else type(mask)
        raise ValueError(f"mask must be a bool tensor {tuple(shape)}, True = real token; got {got}")


class CompatLM(nn.Module):
    """performer-pytorch's ``PerformerLM``: ``tokens (B, N)`` int64 -> ``logits (B, N, V)``.

    Keywords are ``PerformerLM``'s with its defaults (``dim_head=64``, ``qkv_bias=False``,
    ``attn_out_bias=False``, ``rotary_position_emb=True``); the rest go to
    :class:`CompatPerformer`. ``rotary_position_emb`` adds a fixed sinusoid to the token
    embedding and rotates queries and keys of every layer; without it a learned absolute
    embedding is added. ``vocab_size`` is ``num_tokens``.

    A causal model carries its recurrent state like :class:`favor.ops.models.PerformerLM`:
    ``(offsets (B,) int64, kv_0, ..., kv_{depth-1})`` with ``kv_i (B, heads, M', dim_head + 1)``.
    Positions are ``offsets + arange(N)``, so a sequence fed in pieces gets the positions it
    would get whole; a position past ``max_seq_len`` is an error, as performer asserts.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int | None = 64,
        emb_dropout: float = 0.0,
        tie_embed: bool = False,
        rotary_position_emb: bool = True,
        axial_position_emb: bool = False,
        qkv_bias: bool = False,
        attn_out_bias: bool = False,
        **performer_options: object,
    ) -> None:
        super().__init__()
        if axial_position_emb and not rotary_position_emb:  # performer ignores it with rotary
            raise _unsupported(
                "axial_position_emb", axial_position_emb, "use rotary or absolute positions"
            )
        self.performer = CompatPerformer(
            dim, depth, heads, dim_head, qkv_bias=qkv_bias, attn_out_bias=attn_out_bias,
            **performer_options,
        )  # fmt: skip
        self._config = {
            "num_tokens": check_positive_int("num_tokens", num_tokens),
            "max_seq_len": check_positive_int("max_seq_len", max_seq_len),
            **self.performer.config(),
            "emb_dropout": emb_dropout,
            "tie_embed": bool(tie_embed),
            "rotary_position_emb": bool(rotary_position_emb),
        }
        dim_head = self._config["dim_head"]
        self.token_emb = nn.Embedding(num_tokens, dim)
        if rotary_position_emb:
            self.pos_emb = SinusoidPositions(dim, max_seq_len)
            self.layer_pos_emb = SinusoidPositions(dim_head, max_seq_len)
        else:
            self.pos_emb = LearnedPositions(dim, max_seq_len)
            self.layer_pos_emb = None
        self.norm = nn.LayerNorm(dim)
        self.to_out = None if tie_embed else nn.Linear(dim, num_tokens)

    def config(self) -> dict:
        """Constructor arguments, JSON-ready: ``type(m)(**m.config())`` rebuilds the model."""
        return dict(self._config)

    def fix_key_shifts(self, tokens: torch.Tensor) -> None:
        """Give each causal softmax layer the key shift performer's would take on ``tokens
        (B, N)``: its sequence-wide key maximum ``max over n, i of y_n.w_i``, averaged over the
        batch (:meth:`CompatAttention.set_key_shift`).

        The keys are this model's own, layer by layer, each layer shifted before the next one
        runs: performer's weights give the same keys, so no performer model is needed.
        """

        def measure(layer: CompatAttention, args: tuple) -> None:
            _, keys = layer._scaled(args[0], args[1])
            projected = keys @ layer.projection_weights().T.to(keys.dtype)
            layer.set_key_shift(projected.amax(dim=(-1, -2)).mean(0))

        layers = [
            m
            for m in self.modules()
            if isinstance(m, CompatAttention) and m.causal and m.feature_map == "softmax"
        ]
        hooks = [layer.register_forward_pre_hook(measure) for layer in layers]
        try:
            with torch.no_grad():
                self(tokens)
        finally:
            for hook in hooks:
                hook.remove()

    @property
    def vocab_size(self) -> int:
        """``num_tokens``, under the name favor's models use."""
        return self._config["num_tokens"]

    @property
    def causal(self) -> bool:
        """Whether the model is a causal LM, with a state to carry."""
        return self.performer.causal

    def initial_state(self, batch: int, *, device: torch.device | str | None = None) -> LMState:
        """The state before any token: zero offsets and empty attention states."""
        heads, dim_head = self._config["heads"], self._config["dim_head"]
        layers = tuple(
            attention.initial_state(batch, heads, dim_head, device=device)
            for attention in self.performer.attention_layers()
        )
        return (torch.zeros(batch, dtype=torch.int64, device=device), *layers)

    def _offsets(self, tokens: torch.Tensor, state: LMState | None) -> torch.Tensor:
        """The state's offsets ``(B,)`` after checking ``tokens`` and ``state``."""
        batch = tokens.shape[0]
        if state is None:
            return torch.zeros(batch, dtype=torch.int64, device=tokens.device)
        if not self.causal:
            raise ValueError("a state continues causal sequences; this model has causal=False")
        if len(state) != len(self.performer.net.layers) + 1:  # a Python tuple, also when traced
            raise ValueError(
                f"state must be (offsets, kv_0, ..., kv_{len(state) - 2}) with one kv per "
                f"layer: {len(self.performer.net.layers) + 1} tensors, got {len(state)}"
            )
        offsets = state[0]
        if not tracing() and (offsets.shape != (batch,) or offsets.is_floating_point()):
            shape = tuple(offsets.shape)
            raise ValueError(f"state offsets must be an int64 tensor ({batch},), got {shape}")
        return offsets

    def forward(
        self,
        tokens: torch.Tensor,
        state: LMState | None = None,
        *,
        return_state: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LMState]:
        """``tokens (B, N)`` -> ``logits (B, N, V)``; ``(logits, new_state)`` with ``return_state``.

        ``mask (B, N)`` is performer's: True at real tokens; the others' values are zeroed in
        every attention layer. ``state`` and ``return_state`` need ``causal=True``.
        """
        if not tracing() and (
            not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point()
        ):
            got = (
                (tokens.dtype, tuple(tokens.shape))
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
            raise ValueError(f"tokens must be an integer tensor (B, N), got {got}")
        if return_state and not self.causal:
            raise ValueError("return_state needs causal=True: bidirectional models keep no state")
        _check_mask(mask, tokens.shape)
        offsets = self._offsets(tokens, state)
        positions = offsets.unsqueeze(1) + torch.arange(tokens.shape[1], device=tokens.device)
        limit = self._config["max_seq_len"]
        if not tracing() and positions.numel() and int(positions.max()) >= limit:
            raise ValueError(
                f"position {int(positions.max())} is past max_seq_len={limit}: the model has no "
                "embedding for it"
            )
        x = self.token_emb(tokens)
        x = x + self.pos_emb(positions).to(x.dtype)
        sinusoid = None if self.layer_pos_emb is None else self.layer_pos_emb(positions)
        layer_states = None if state is None else state[1:]
        x, new_states = self.performer.net(x, sinusoid=sinusoid, mask=mask, states=layer_states)
        x = self.norm(x)
        logits = x @ self.token_emb.weight.T if self.to_out is None else self.to_out(x)
        if not return_state:
            return logits
        return logits, (offsets + tokens.shape[1], *new_states)
