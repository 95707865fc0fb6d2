"""The fused causal path: :func:`favor.ops.fused.causal_linear_attention` as one ONNX node.

ONNX Runtime's ``com.microsoft.LinearAttention`` contrib op, and ONNX's own ``LinearAttention``
from opset 27, run the recurrence ``S_t = S_{t-1} + k_t v_t^T``, ``o_t = scale q_t^T S_t`` over
packed ``(B, T, H*D)`` inputs, with an optional ``past_state`` and a ``present_state`` of shape
``(B, H, d_k, d_v)``: our ``(B, H, M, Dv + 1)`` state, as it is. The translation packs the
feature maps ``(B, H, N, M) -> (B, N, H*M)``, asks for ``update_rule="linear"`` and ``scale=1``,
and unpacks the output; the ones column in the values makes the last output column the
denominator, exactly as in the portable graph.

The node is written in the contrib domain and moved to the standard domain when the graph's
opset is 27 or more: the dynamo exporter writes at most opset 25, so the standard op cannot be
emitted directly, and the two ops agree on every input, output and attribute used here.
"""

from __future__ import annotations

import functools

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from onnx.reference.ops.op_linear_attention import LinearAttention as StandardLinearAttention
from onnxscript import opset18 as op

import favor.ops.fused  # noqa: F401  registers favor::causal_linear_attention

from .errors import ExportError

OP_TYPE = "LinearAttention"
CONTRIB_DOMAIN = "com.microsoft"
# The opset where ONNX itself defines LinearAttention.
STANDARD_OPSET = 27
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_contrib = onnxscript.values.Opset(CONTRIB_DOMAIN, 1)


@functools.cache
def register_contrib_schema() -> None:
    """Teach onnx (checker, shape inference, onnxscript) the contrib op's signature.

    onnx ships only the standard ops' schemas; ONNX Runtime's contrib schemas live in its own
    binary. This one mirrors ``com.microsoft.LinearAttention`` version 1 as onnxruntime 1.31
    declares it.
    """
    try:
        onnx.defs.get_schema(OP_TYPE, 1, CONTRIB_DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    attribute, kind = OpSchema.Attribute, OpSchema.AttrType
    schema = OpSchema(
        OP_TYPE,
        CONTRIB_DOMAIN,
        1,
        inputs=[
            param("query", "T"),
            param("key", "T"),
            param("value", "T"),
            param("past_state", "S", param_option=optional),
            param("decay", "T", param_option=optional),
            param("beta", "T", param_option=optional),
        ],
        outputs=[param("output", "T"), param("present_state", "S")],
        type_constraints=[("T", _FLOATS, ""), ("S", _FLOATS, "")],
        attributes=[
            attribute("q_num_heads", kind.INT, "", required=True),
            attribute("kv_num_heads", kind.INT, "", required=True),
            attribute("update_rule", kind.STRING, "", required=False),
            attribute("scale", kind.FLOAT, "", required=False),
            attribute("chunk_size", kind.INT, "", required=False),
            attribute("state_window", kind.INT, "", required=False),
        ],
    )
    onnx.defs.register_schema(schema)


def _pack(x):
    """``(B, H, N, W) -> (B, N, H*W)``."""
    return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


def translate(phi_q, phi_k, values, state, chunk_size: int):
    """The dynamo exporter's translation of ``favor::causal_linear_attention``."""
    heads = phi_q.shape[1]
    if not isinstance(heads, int):
        raise ExportError(
            "--fused-attention needs a fixed number of heads; this graph's head axis is symbolic"
        )
    packed = [_pack(x) for x in (phi_q, phi_k, values)]
    inputs = [*packed, state] if state is not None else packed
    out, new_state = _contrib.LinearAttention(
        *inputs,
        q_num_heads=heads,
        kv_num_heads=heads,
        update_rule="linear",
        scale=1.0,
        chunk_size=chunk_size,
    )
    unpacked = op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1]))
    return op.Transpose(unpacked, perm=[0, 2, 1, 3]), new_state


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    register_contrib_schema()
    return {torch.ops.favor.causal_linear_attention.default: translate}


def fused_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The LinearAttention nodes of ``model``'s main graph, in either domain."""
    return [
        n
        for n in model.graph.node
        if n.op_type == OP_TYPE and n.domain in (CONTRIB_DOMAIN, "", "ai.onnx")
    ]


def finish(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Move the fused nodes to ONNX's domain at opset >= 27; drop an unused contrib import."""
    if opset >= STANDARD_OPSET:
        for node in fused_nodes(model):
            node.domain = ""
            kept = [a for a in node.attribute if a.name != "state_window"]
            del node.attribute[:]
            node.attribute.extend(kept)
    if not any(n.domain == CONTRIB_DOMAIN for n in model.graph.node):
        kept = [o for o in model.opset_import if o.domain != CONTRIB_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model


class LinearAttention(StandardLinearAttention):
    """ONNX's reference implementation of the standard op, answering for the contrib domain.

    Lets the reference evaluator check a fused graph with an implementation independent of
    both PyTorch and ONNX Runtime. (The evaluator finds custom ops by class name and
    ``op_domain``.)
    """

    op_domain = CONTRIB_DOMAIN

    def _run(self, *inputs, state_window=None, **attributes):
        return super()._run(*inputs, **attributes)
