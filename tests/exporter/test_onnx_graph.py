"""Properties of the exported graph itself."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from torch import nn

from favor.exporter import ExportError, export
from favor.exporter.onnx_graph import (
    EXPORTERS,
    FORBIDDEN_OPS,
    check_allowed_ops,
    onnxruntime_limits,
    split_sizes_as_input,
)
from favor.exporter.specs import TensorSpec
from tests.exporter.custom_models import UsesQR, UsesRandom


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_has_symbolic_axes_constant_projections_and_named_state(lm_export):
    model = onnx.load(str(lm_export.onnx_path))
    assert model.opset_import[0].version == 17
    assert model.ir_version <= onnxruntime_limits()[1]
    inputs = {v.name: _dims(v) for v in model.graph.input}
    outputs = {v.name: _dims(v) for v in model.graph.output}
    assert inputs["tokens"] == ["batch", "seq"]
    assert inputs["state.0"] == ["batch", 2, 16, 17]
    assert outputs["logits"] == ["batch", "seq", 40]
    assert outputs["new_state.1"] == ["batch", 2, 16, 17]
    assert not {n.op_type for n in model.graph.node} & set(FORBIDDEN_OPS)
    initializer_shapes = {tuple(t.dims) for t in model.graph.initializer}
    assert (16, 16) in initializer_shapes or (16, 16) in {
        tuple(reversed(s)) for s in initializer_shapes
    }


def test_shape_inference_gives_symbolic_output_shapes(lm_export):
    inferred = onnx.shape_inference.infer_shapes(
        onnx.load(str(lm_export.onnx_path)), strict_mode=True
    )
    assert _dims(next(o for o in inferred.graph.output if o.name == "logits")) == [
        "batch",
        "seq",
        40,
    ]


def test_the_manifest_records_the_state_wiring(lm_export):
    manifest = lm_export.manifest
    assert [(s["input"], s["output"]) for s in manifest["state"]] == [
        ("state.offsets", "new_state.offsets"),
        ("state.0", "new_state.0"),
        ("state.1", "new_state.1"),
    ]
    assert [layer["path"] for layer in manifest["attention"]] == [
        "blocks.0.attn.attention",
        "blocks.1.attn.attention",
    ]
    assert manifest["attention"][0] | {"path": None} == {
        "path": None, "dim_head": 16, "nb_features": 16, "feature_dim": 16, "causal": True,
        "kernel": "posrf", "projection": "orf", "seed": 0, "chunk_size": 8, "orf_norm": "chi",
    }  # fmt: skip


def test_external_data_keeps_weights_beside_the_graph(lm_checkpoint, tmp_path):
    result = export(
        lm_checkpoint, tmp_path, exporter="torchscript", formats="onnx", external_data=True
    )
    assert result.files["onnx_data"].name == "lm.onnx.data"
    assert result.report.passed
    assert set(result.manifest["files"]) == {"onnx", "onnx_data"}
    ort.InferenceSession(str(result.onnx_path))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize(
    ("model", "message"),
    [
        (UsesQR(), r"unsupported op aten::linalg_qr .*called at inner.decompose"),
        (UsesRandom(), r"random numbers.*called at noise: aten::"),
    ],
    ids=["qr", "random"],
)
def test_unexportable_op_is_named_with_its_submodule(model, message, exporter, tmp_path):
    with pytest.raises(ExportError, match=message):
        export(model, tmp_path, exporter=exporter, inputs=["x:batch,4:float32"])
    assert list(tmp_path.iterdir()) == []


def _graph_of(op_types: list[str]) -> onnx.ModelProto:
    """A chain of one-input nodes of ``op_types``: enough for an op check, not meant to run."""
    names = [f"v{i}" for i in range(len(op_types) + 1)]
    nodes = [
        helper.make_node(op, [a], [b])
        for op, a, b in zip(op_types, names[:-1], names[1:], strict=True)
    ]
    values = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in names]
    return helper.make_model(helper.make_graph(nodes, "g", values[:1], values[-1:]))


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


def test_a_graph_of_allowed_ops_passes_the_op_check():
    check_allowed_ops(_graph_of(["Relu", "CumSum", "MatMul"]), nn.Identity(), (torch.zeros(1),))


def test_integer_input_ranges_drive_validation():
    spec = TensorSpec("ids", ("batch", "seq"), "int64", low=5, high=9)
    import torch

    values = spec.sample({"batch": 3, "seq": 50}, torch.Generator().manual_seed(0))
    assert values.min() >= 5 and values.max() < 9


def test_learnable_projection_is_folded_into_one_constant_matching_training_time(tmp_path):
    import numpy as np
    import torch

    from favor.ops.models import PerformerLM

    torch.manual_seed(0)
    lm = PerformerLM(40, 32, 1, 2, nb_features=16, chunk_size=8, projection="fastfoodl")
    optimizer = torch.optim.SGD(lm.parameters(), lr=0.5)
    tokens = torch.randint(0, 40, (2, 20))
    lm(tokens).logsumexp(-1).mean().backward()
    optimizer.step()  # the diagonals move away from their initial draw
    lm.eval()
    result = export(lm, tmp_path, name="lm", exporter="torchscript", formats="onnx")
    assert (
        lm.blocks[0].attn.attention.learnable_projection is not None
    )  # the user's model untouched
    names = {t.name for t in onnx.load(str(result.onnx_path)).graph.initializer}
    assert not any("learnable_projection" in n for n in names)
    session = ort.InferenceSession(str(result.onnx_path))
    feeds = dict(
        zip([i.name for i in session.get_inputs()], [tokens, *lm.initial_state(2)], strict=True)
    )
    got = session.run(None, {n: t.numpy() for n, t in feeds.items()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, lm(tokens).numpy(), rtol=1e-4, atol=1e-5)


class Glu(nn.Module):
    """``torch.chunk`` into two halves of the feature axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


class FusedQkv(nn.Module):
    """``torch.split`` into equal parts, as a fused query/key/value projection is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = x.split(4, dim=-1)
        return q * k + v


class UnevenSplit(nn.Module):
    """``torch.split`` of 12 features by 5 (5, 5, 2), reassembled in reverse order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = x.split(5, dim=-1)
        return torch.cat([c, b * 2, a], dim=-1)


class SizedSplit(nn.Module):
    """``torch.split`` with explicit sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split([3, 9], dim=-1)
        return torch.cat([b, a.exp()], dim=-1)


class Unbind(nn.Module):
    """``torch.unbind`` of a fixed axis of size 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = x.unbind(-1)
        return a * b + c


SPLITTING = [
    pytest.param(Glu(), "x:batch,seq,12:float32", id="chunk"),
    pytest.param(FusedQkv(), "x:batch,seq,12:float32", id="split-equal"),
    pytest.param(UnevenSplit(), "x:batch,seq,12:float32", id="split-uneven"),
    pytest.param(SizedSplit(), "x:batch,seq,12:float32", id="split-sizes"),
    pytest.param(Unbind(), "x:batch,seq,3:float32", id="unbind"),
]


def _num_outputs_splits(model: onnx.ModelProto) -> list[str]:
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)
    ]


@pytest.mark.parametrize("opset", [17, 18], ids=["opset17", "opset18"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(("module", "declared"), SPLITTING)
def test_splitting_modules_export_and_match_pytorch(module, declared, exporter, opset, tmp_path):
    result = export(
        module, tmp_path, exporter=exporter, opset=opset, inputs=[declared], formats="onnx"
    )
    assert result.report.passed, result.report.table()
    model = onnx.load(str(result.onnx_path))
    assert model.opset_import[0].version == opset
    if opset < 18:
        assert _num_outputs_splits(model) == []


def _split_graph(dims: list, parts: int, opset: int) -> onnx.ModelProto:
    """``x -> Split(x, axis=1, num_outputs=parts)``, declared at ``opset``."""
    outputs = [f"part_{i}" for i in range(parts)]
    graph = helper.make_graph(
        [helper.make_node("Split", ["x"], outputs, name="split", axis=1, num_outputs=parts)],
        "split",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [2, f"{o}_dim", 3])
            for o in outputs
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("axis_dim", ["fixed", "symbolic"])
@pytest.mark.parametrize(
    ("size", "parts", "sizes"),
    [(8, 2, [4, 4]), (7, 2, [4, 3]), (7, 3, [3, 3, 1]), (12, 4, [3, 3, 3, 3])],
    ids=["8-by-2", "7-by-2", "7-by-3", "12-by-4"],
)
def test_num_outputs_split_becomes_opset_13_split_with_the_same_parts(size, parts, sizes, axis_dim):
    x = np.arange(2 * size * 3, dtype=np.float32).reshape(2, size, 3)
    dims = [2, size if axis_dim == "fixed" else "n", 3]
    want = ort.InferenceSession(_split_graph(dims, parts, 18).SerializeToString()).run(
        None, {"x": x}
    )
    model = _split_graph(dims, parts, 17)
    split_sizes_as_input(model)
    onnx.checker.check_model(model, full_check=True)
    assert _num_outputs_splits(model) == []
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert [part.shape[1] for part in got] == sizes
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
