"""--fused-attention: causal attention as one LinearAttention node, checked like the portable graph."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator

from favor.exporter import ExportError, export, onnx_graph
from favor.exporter.checkpoint import load_model
from favor.exporter.cli import export_command
from favor.exporter.linear_attention import CONTRIB_DOMAIN, fused_nodes
from favor.exporter.model_specs import exportable
from favor.exporter.outputs import describe_outputs
from favor.ops import FavorAttention
from favor.ops.reference import favor_attention_reference
from favor.runtime import Generator, Session
from tests.helpers import qkv, validate_files

HEADS, DIM, FEATURES, CHUNK = 4, 16, 24, 16


class Stateful(torch.nn.Module):
    """Causal attention with its state in and out, as the stateful LM graph uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = FavorAttention(DIM, FEATURES, causal=True, chunk_size=CHUNK, seed=2)

    def forward(self, q, k, v, state):
        return self.attention(q, k, v, state=state, return_state=True)


DECLARATIONS = [
    f"q:batch,{HEADS},seq,{DIM}:float32",
    f"k:batch,{HEADS},seq,{DIM}:float32",
    f"v:batch,{HEADS},seq,{DIM}:float32",
    f"state:batch,{HEADS},{FEATURES},{DIM + 1}:float32",
]


def _graph(opset: int = 17) -> onnx.ModelProto:
    module, spec = exportable(Stateful().eval(), DECLARATIONS)
    dims, _ = describe_outputs(module, spec)
    return onnx_graph.build_onnx(
        module, spec, dims, opset=opset, exporter="dynamo", fused_attention=True
    )


@pytest.fixture(scope="module")
def fused_graph():
    return _graph()


@pytest.fixture(scope="module")
def fused_session(fused_graph):
    return ort.InferenceSession(fused_graph.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(module: Stateful, q, k, v):
    """The plain textbook form in float64: no chunks, no fused op."""
    attn = module.attention
    return favor_attention_reference(
        q.double(), k.double(), v.double(), attn.projection_matrix, attn.kernel, causal=True
    )


def _run(session, q, k, v, state):
    feeds = {"q": q, "k": k, "v": v, "state": state}
    return session.run(None, {name: t.numpy() for name, t in feeds.items()})


def test_graph_has_one_contrib_node_and_no_chunked_contraction(fused_graph):
    (node,) = fused_nodes(fused_graph)
    assert node.domain == CONTRIB_DOMAIN
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["update_rule"] == b"linear"
    assert attributes["scale"] == 1.0
    assert attributes["q_num_heads"] == attributes["kv_num_heads"] == HEADS
    assert node.input[3] == "state"
    assert "CumSum" not in {n.op_type for n in fused_graph.graph.node}


LENGTHS = {"1": 1, "C-1": CHUNK - 1, "C": CHUNK, "C+1": CHUNK + 1, "777": 777}


@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_matches_the_textbook_reference_at_any_length(fused_session, length):
    module = Stateful().eval()
    q, k, v = qkv(2, HEADS, length, DIM, seed=length)
    out, new_state = _run(fused_session, q, k, v, torch.zeros(2, HEADS, FEATURES, DIM + 1))
    expected = _reference(module, q, k, v)
    torch.testing.assert_close(torch.from_numpy(out).double(), expected, rtol=1e-4, atol=1e-5)
    _, torch_state = module(q, k, v, None)
    torch.testing.assert_close(torch.from_numpy(new_state), torch_state, rtol=1e-5, atol=1e-6)


def test_a_carried_state_continues_the_sequence(fused_session):
    module = Stateful().eval()
    q, k, v = qkv(1, HEADS, 100, DIM, seed=5)
    empty = torch.zeros(1, HEADS, FEATURES, DIM + 1)
    _, state = _run(fused_session, q[:, :, :37], k[:, :, :37], v[:, :, :37], empty)
    rest, _ = _run(fused_session, q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], torch.from_numpy(state))
    expected = _reference(module, q, k, v)[:, :, 37:]
    torch.testing.assert_close(torch.from_numpy(rest).double(), expected, rtol=1e-4, atol=1e-5)


def test_outputs_never_depend_on_future_tokens(fused_session):
    q, k, v = qkv(1, HEADS, 90, DIM, seed=8)
    state = torch.zeros(1, HEADS, FEATURES, DIM + 1)
    before, _ = _run(fused_session, q, k, v, state)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, 50:] = torch.randn_like(t[:, :, 50:]) * 3
    after, _ = _run(fused_session, q2, k2, v2, state)
    np.testing.assert_array_equal(after[:, :, :50], before[:, :, :50])
    assert not np.allclose(after[:, :, 50:], before[:, :, 50:])


@pytest.mark.slow
def test_long_sequence_matches_torch(fused_session):
    module = Stateful().eval()
    q, k, v = qkv(1, HEADS, 20_000, DIM, seed=11)
    out, _ = _run(fused_session, q, k, v, torch.zeros(1, HEADS, FEATURES, DIM + 1))
    with torch.no_grad():
        expected, _ = module(q.double(), k.double(), v.double(), None)
    torch.testing.assert_close(torch.from_numpy(out).double(), expected, rtol=1e-4, atol=1e-5)


def test_at_opset_27_the_node_is_onnx_own_op(monkeypatch):
    # The installed onnxruntime stops below opset 27, so pretend it does not, and run the graph
    # on ONNX's reference evaluator instead.
    limits = lambda: (27, onnx.IR_VERSION)  # noqa: E731
    monkeypatch.setattr("favor.exporter.onnx_graph.opsets.onnxruntime_limits", limits)
    monkeypatch.setattr("favor.exporter.onnx_graph.torch_export.onnxruntime_limits", limits)
    graph = _graph(opset=27)
    (node,) = fused_nodes(graph)
    assert node.domain == ""
    assert CONTRIB_DOMAIN not in {o.domain for o in graph.opset_import}
    module = Stateful().eval()
    q, k, v = qkv(1, HEADS, 20, DIM, seed=3)
    feeds = {"q": q, "k": k, "v": v, "state": torch.zeros(1, HEADS, FEATURES, DIM + 1)}
    out, _ = ReferenceEvaluator(graph).run(None, {n: t.numpy() for n, t in feeds.items()})
    expected = _reference(module, q, k, v)
    torch.testing.assert_close(torch.from_numpy(out).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def fused_lm(lm_checkpoint, tmp_path_factory):
    return export(lm_checkpoint, tmp_path_factory.mktemp("fused-lm"), fused_attention=True)


def test_lm_export_is_validated_and_recorded(fused_lm):
    assert fused_lm.report.passed
    backends = {row["backend"] for row in fused_lm.report.rows()}
    assert {"onnxruntime-cpu", "onnxruntime-cpu (decode)", "onnx-reference"} <= backends
    assert fused_lm.manifest.to_json()["fused_attention"] is True
    graph = onnx.load(str(fused_lm.onnx_path))
    assert len(fused_nodes(graph)) == len(fused_lm.manifest.to_json()["attention"])


def test_runtime_streams_the_same_tokens_as_the_portable_graph(fused_lm, lm_export):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    fused = Generator(Session(fused_lm.output_dir)).generate(prompt, 25)
    portable = Generator(Session(lm_export.output_dir)).generate(prompt, 25)
    assert fused == portable


def test_validation_catches_a_wrong_fused_node(fused_lm, lm_checkpoint, tmp_path):
    graph = onnx.load(str(fused_lm.onnx_path))
    # (A wrong scale would cancel in the division: the denominator rides in the same node.)
    for node in fused_nodes(graph):
        node.input[0], node.input[1] = node.input[1], node.input[0]
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    module, spec = exportable(load_model(lm_checkpoint).module, [])
    report = validate_files(module, spec, {"onnx": broken})
    assert not report.passed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exporter": "torchscript"}, "needs the dynamo exporter"),
        ({"formats": "torchscript"}, "has no onnx"),
    ],
    ids=["torchscript-exporter", "no-onnx-format"],
)
def test_unusable_combinations_are_refused(lm_checkpoint, tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export(lm_checkpoint, tmp_path, fused_attention=True, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_model_without_causal_attention(encoder_checkpoint, tmp_path):
    result = CliRunner().invoke(
        export_command, [str(encoder_checkpoint), "-o", str(tmp_path), "--fused-attention"]
    )
    assert result.exit_code == 2
    assert "no causal FavorAttention layer" in result.output
    assert list(tmp_path.iterdir()) == []


def test_manifest_of_a_portable_export_says_so(lm_export):
    manifest = json.loads(lm_export.manifest_path.read_text())
    assert manifest["fused_attention"] is False


@pytest.mark.cuda
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu with a CUDA device",
)
@pytest.mark.parametrize("length", [1, 777, 16_384], ids=["1", "777", "16k"])
def test_cuda_provider_runs_the_fused_node(fused_graph, length):
    session = ort.InferenceSession(
        fused_graph.SerializeToString(), providers=["CUDAExecutionProvider"]
    )
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    module = Stateful().eval()
    q, k, v = qkv(1, HEADS, length, DIM, seed=length)
    out, _ = _run(session, q, k, v, torch.zeros(1, HEADS, FEATURES, DIM + 1))
    expected = _reference(module, q, k, v)
    torch.testing.assert_close(torch.from_numpy(out).double(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "op_type"),
    [({"dtype": "fp16"}, "Cast"), ({"quantize": "int8"}, "MatMulInteger")],
    ids=["fp16", "int8"],
)
def test_combines_with_the_precision_options(lm_checkpoint, tmp_path, options, op_type):
    result = export(lm_checkpoint, tmp_path, fused_attention=True, **options)
    assert result.report.passed
    graph = onnx.load(str(result.onnx_path))
    assert len(fused_nodes(graph)) == len(result.manifest.to_json()["attention"])
    assert op_type in {n.op_type for n in graph.graph.node}


def test_runtime_names_the_fused_op_when_onnxruntime_cannot_load_it(fused_lm, monkeypatch):
    from favor.runtime import session as runtime_session
    from favor.runtime.manifest import ManifestError

    def old_onnxruntime(*_args, **_kwargs):
        raise RuntimeError("Could not find an implementation for LinearAttention(1) node")

    monkeypatch.setattr(runtime_session.ort, "InferenceSession", old_onnxruntime)
    with pytest.raises(ManifestError, match="fused LinearAttention op"):
        Session(fused_lm.output_dir)
