"""Properties of whole exported graphs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from favor.exporter import ExportError, export
from favor.exporter.onnx_graph import EXPORTERS, onnxruntime_limits
from favor.exporter.specs import TensorSpec
from favor.ops.models import PerformerLM
from tests.exporter.custom_models import UsesQR, UsesRandom
from tests.exporter.onnx_graph.splits import num_outputs_splits
from tests.helpers import FORBIDDEN_OPS


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
    assert not {n.op_type for n in model.graph.node} & FORBIDDEN_OPS
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
    manifest = lm_export.manifest.to_json()
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
    assert set(result.manifest.to_json()["files"]) == {"onnx", "onnx_data"}
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


def test_integer_input_ranges_drive_validation():
    spec = TensorSpec("ids", ("batch", "seq"), "int64", low=5, high=9)
    values = spec.sample({"batch": 3, "seq": 50}, torch.Generator().manual_seed(0))
    assert values.min() >= 5 and values.max() < 9


def test_learnable_projection_is_folded_into_one_constant_matching_training_time(tmp_path):
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
        assert num_outputs_splits(model) == []
