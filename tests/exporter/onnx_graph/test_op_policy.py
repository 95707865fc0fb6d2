"""The op policy: no randomness or control flow in a graph; fused attention only where it applies."""

import onnx
import pytest
import torch
from onnx import defs, helper
from torch import nn

from favor.exporter.errors import ExportError
from favor.exporter.onnx_graph.op_policy import check_allowed_ops, check_fusable
from favor.ops import FavorAttention
from tests.helpers import FORBIDDEN_OPS

# Takes a seed like the random ops, but is the identity in inference (training_mode false).
_SEEDED_YET_DETERMINISTIC = {"Dropout"}


def _graph_of(op_types: list[str]) -> onnx.ModelProto:
    """A chain of one-input nodes of ``op_types``: enough for an op check, not meant to run."""
    names = [f"v{i}" for i in range(len(op_types) + 1)]
    nodes = [
        helper.make_node(op, [a], [b])
        for op, a, b in zip(op_types, names[:-1], names[1:], strict=True)
    ]
    values = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in names]
    return helper.make_model(helper.make_graph(nodes, "g", values[:1], values[-1:]))


def test_the_forbidden_list_holds_every_random_and_control_flow_op_onnx_defines():
    graph_types = {defs.OpSchema.AttrType.GRAPH, defs.OpSchema.AttrType.GRAPHS}
    random_or_control_flow = {
        schema.name
        for schema in defs.get_all_schemas_with_history()
        if schema.domain in ("", "ai.onnx")
        and (
            "seed" in schema.attributes
            or any(a.type in graph_types for a in schema.attributes.values())
        )
    }
    assert random_or_control_flow - _SEEDED_YET_DETERMINISTIC == FORBIDDEN_OPS


@pytest.mark.parametrize("op_type", sorted(FORBIDDEN_OPS))
def test_every_random_or_control_flow_op_is_refused(op_type):
    with pytest.raises(ExportError, match=rf"^the exported graph contains {op_type} \("):
        check_allowed_ops(_graph_of(["Relu", op_type]), nn.Identity(), (torch.zeros(1),))


@pytest.mark.parametrize(
    ("op_type", "reason"),
    [
        ("Scan", "a loop over a sequence"),
        ("Bernoulli", "random numbers"),
        ("RandomNormalLike", "random numbers"),
        ("If", "data-dependent control flow"),
    ],
    ids=["scan", "bernoulli", "random-normal-like", "if"],
)
def test_a_graph_with_a_forbidden_op_is_refused(op_type, reason):
    model = _graph_of(["Relu", op_type])
    message = rf"^the exported graph contains {op_type} \({reason}\); forward must not"
    with pytest.raises(ExportError, match=message):
        check_allowed_ops(model, nn.Identity(), (torch.zeros(1),))


def test_each_forbidden_op_is_named_once_in_order():
    model = _graph_of(["RandomUniformLike", "Relu", "Bernoulli", "RandomUniformLike"])
    with pytest.raises(ExportError) as info:
        check_allowed_ops(model, nn.Identity(), (torch.zeros(1),))
    assert str(info.value).startswith(
        "the exported graph contains Bernoulli (random numbers), "
        "RandomUniformLike (random numbers); "
    )


def test_a_graph_of_allowed_ops_passes_the_op_check():
    check_allowed_ops(_graph_of(["Relu", "CumSum", "MatMul"]), nn.Identity(), (torch.zeros(1),))


class Attends(nn.Module):
    """One FavorAttention layer, causal or not."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.attention = FavorAttention(8, 8, causal=causal)


@pytest.mark.parametrize(
    ("causal", "exporter", "message"),
    [
        (True, "torchscript", "needs the dynamo exporter"),
        (False, "dynamo", "the model has no causal FavorAttention layer"),
    ],
    ids=["torchscript-exporter", "no-causal-layer"],
)
def test_fused_attention_is_refused_where_it_cannot_apply(causal, exporter, message):
    with pytest.raises(ExportError, match=message):
        check_fusable(Attends(causal), exporter)


def test_fused_attention_is_allowed_for_causal_attention_with_dynamo():
    check_fusable(Attends(causal=True), "dynamo")
