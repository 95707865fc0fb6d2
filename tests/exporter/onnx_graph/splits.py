"""Finding opset 18 style Splits, the form graphs below opset 18 must not hold."""

import onnx


def num_outputs_splits(model: onnx.ModelProto) -> list[str]:
    """Names of the Split nodes that give their part count as a ``num_outputs`` attribute."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)
    ]
