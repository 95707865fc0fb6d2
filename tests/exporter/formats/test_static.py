"""``--static``: fixed-shape graphs for NPUs, their op set, usability, parity and options."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from favor.exporter import ExportError, export
from favor.exporter.options import ExportOptions
from favor.exporter.static.npu_ops import npu_friendly
from favor.ops import FavorAttention
from favor.ops.causal import causal_chunked
from favor.ops.static import causal_fixed
from favor.runtime.manifest import export_files, load_manifest
from favor.runtime.static import StaticLM

CHUNK = 8
# Ops the static decode graph must not hold: NPU providers lack them, or they mean a dynamic shape.
DYNAMIC_OPS = {"CumSum", "Trilu", "Range", "Mod", "ConstantOfShape", "Expand"}


@pytest.fixture(scope="module")
def static_export(lm_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    return export(
        lm_checkpoint, out, formats="onnx", exporter="torchscript", static=True,
        prefill_chunk=CHUNK, validate_outputs=False,
    )  # fmt: skip


@pytest.mark.parametrize("length", [1, 5, 8, 13], ids=lambda n: f"seq{n}")
def test_causal_fixed_matches_the_chunked_form(length):
    torch.manual_seed(length)
    q, k = torch.rand(2, 3, length, 6), torch.rand(2, 3, length, 6)
    v, state = torch.randn(2, 3, length, 5), torch.rand(2, 3, 6, 5)
    want = causal_chunked(q, k, v, state, chunk_size=4)
    got = causal_fixed(q, k, v, state)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_switch_leaves_pytorch_outputs_alone():
    from favor.ops import fixed_length_attention

    attention = FavorAttention(8, 16, causal=True).eval()
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    want = attention(q, k, v)
    with fixed_length_attention(attention):
        assert attention.fixed_length
        got = attention(q, k, v)
    assert not attention.fixed_length
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_rewritten_erf_stays_within_float32_resolution(tmp_path):
    x = np.linspace(-6, 6, 20001, dtype=np.float32)
    node = onnx.helper.make_node("Erf", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "erf",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [x.size])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [x.size])],
    )  # fmt: skip
    model = npu_friendly(
        onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8
        )
    )
    assert "Erf" not in {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString())
    (got,) = session.run(None, {"x": x})
    want = np.array([math.erf(float(v)) for v in x])
    # A&S 7.1.26 is within 1.5e-7; float32 arithmetic adds a few ulps of 1 (6e-8 each).
    assert np.abs(got - want).max() < 5e-7


def test_decode_graph_has_no_dynamic_ops_or_dims(static_export):
    graph = onnx.load(static_export.files["decode"], load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & DYNAMIC_OPS
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), value.name


def test_both_graphs_share_one_weights_file(static_export):
    locations = set()
    for role in ("decode", "prefill"):
        graph = onnx.load(static_export.files[role], load_external_data=False)
        locations |= {
            entry.value
            for t in graph.graph.initializer
            for entry in t.external_data
            if entry.key == "location"
        }
    assert locations == {static_export.files["static_data"].name}


def test_usability_targets_are_met_and_recorded(static_export):
    entry = static_export.manifest.static
    assert entry["batch"] == 1 and entry["prefill_chunk"] == CHUNK
    for role in ("decode", "prefill"):
        usability = entry["graphs"][role]["usability"]
        for provider in ("nnapi", "coreml_mlprogram"):
            summary = usability[provider]
            assert summary["supported"] / summary["nodes"] >= 0.9, (role, provider)
        assert usability["nnapi"]["partitions"] <= 3
    decode = entry["graphs"]["decode"]["usability"]["coreml_mlprogram"]
    assert decode["partitions"] == 1 and decode["supported"] / decode["nodes"] >= 0.98
    written = json.loads(static_export.manifest_path.read_text())
    assert written["static"] == entry
    assert {"decode", "prefill", "static_data"} <= set(written["files"])


@pytest.mark.parametrize(
    "length", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3], ids=lambda n: f"seq{n}"
)
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"batch{b}")
def test_static_pair_matches_the_dynamic_graph(static_export, length, batch):
    manifest = load_manifest(static_export.manifest_path)
    files = export_files(static_export.manifest_path, manifest)
    pair = StaticLM.from_manifest(manifest, files)
    dynamic = ort.InferenceSession(str(files["onnx"]))
    rng = np.random.default_rng(length)
    feeds = {"tokens": rng.integers(0, manifest.tokens.range[1], (batch, length))}
    feeds["state.offsets"] = rng.integers(0, 50, (batch,))
    for entry in manifest.state_inputs[1:]:
        feeds[entry.name] = rng.random((batch, *entry.shape[1:]), dtype=np.float32)
    want = dict(zip([o.name for o in dynamic.get_outputs()], dynamic.run(None, feeds), strict=True))
    got = pair.run(feeds)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)


def test_static_export_validates_against_pytorch(lm_checkpoint, tmp_path):
    result = export(
        lm_checkpoint, tmp_path, formats="torchscript", static=True, static_batch=2,
        prefill_chunk=CHUNK,
    )  # fmt: skip
    rows = [r for r in result.report.to_json()["rows"] if "static" in r["backend"]]
    assert rows and all(r["passed"] for r in rows)
    assert any("(decode)" in r["backend"] for r in rows)
    assert result.manifest.static["batch"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"static_batch": 2}, "--static-batch sizes the --static graphs"),
        ({"static": True, "static_batch": 0}, "--static-batch must be an integer >= 1"),
        ({"static": True, "prefill_chunk": 1}, "--prefill-chunk must be an integer >= 2"),
        ({"prefill_chunk": 16}, "--prefill-chunk sizes the --static graphs"),
        ({"static": True, "dtype": "fp16"}, "--static writes float32 graphs"),
        ({"static": True, "quantize": "int8"}, "--quantize int8 cannot apply"),
    ],
    ids=["batch-without-static", "batch-0", "chunk-1", "chunk-without-static", "fp16", "int8"],
)
def test_bad_static_options_are_one_line_errors(options, message):
    with pytest.raises(ExportError, match=message) as error:
        ExportOptions(**options)
    assert "\n" not in str(error.value)


def test_format_static_is_the_same_choice():
    assert ExportOptions(formats="onnx,static").static
    assert "static" in ExportOptions(static=True).formats


@pytest.mark.parametrize("dtype", ["fp32", "float32"], ids=["short-name", "long-name"])
def test_static_takes_float32_by_either_name(dtype):
    # The CLI passes --dtype's short name: the check must read the normalized one.
    assert ExportOptions(static=True, dtype=dtype).dtype == "float32"


def test_a_model_without_state_or_mask_is_refused(tmp_path):
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ExportError, match=r"--static needs a causal LM .* key padding mask"):
        export(
            model, tmp_path, inputs=["x:batch,4:float32"], formats="torchscript", static=True,
            validate_outputs=False,
        )  # fmt: skip


def test_an_encoder_gets_one_graph_at_a_fixed_length_validated_with_its_mask(
    encoder_checkpoint, tmp_path
):
    result = export(
        encoder_checkpoint, tmp_path, exporter="torchscript", static=True, static_seq=16
    )
    assert result.manifest.static["seq"] == 16 and "static" in result.files
    graph = onnx.load(result.files["static"], load_external_data=False)
    inputs = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input
    }
    assert inputs == {"tokens": [1, 16], "key_padding_mask": [1, 16]}  # every dim fixed
    # Shorter batches are padded to the graph's length and masked: the sweep must still pass.
    rows = [r for r in result.report.to_json()["rows"] if "static" in r["backend"]]
    assert rows and all(r["passed"] for r in rows)
    mlprogram = result.manifest.static["graphs"]["static"]["usability"]["coreml_mlprogram"]
    assert mlprogram["partitions"] == 1 and mlprogram["supported"] >= 0.9 * mlprogram["nodes"]


def test_an_encoder_without_a_longest_sequence_needs_static_seq(encoder_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="needs --static-seq N"):
        export(encoder_checkpoint, tmp_path, exporter="torchscript", static=True)
