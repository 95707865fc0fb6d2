"""Half-precision exports (--dtype): what is cast, what stays float32, and the fp32 budget."""

import json
import math

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from favor.exporter import ExportError, ValidationError, export, validate_export
from favor.exporter.cli import export_command, validate_command
from favor.exporter.manifest import SCHEMA_PATH
from favor.exporter.precision import BUDGETS, cast_model
from favor.ops import FavorAttention
from favor.ops.models import PerformerLM
from favor.runtime import Generator, Session
from tests.exporter.conftest import VOCAB
from tests.exporter.custom_models import TinyBlock

FLOAT16 = onnx.TensorProto.FLOAT16
FLOAT = onnx.TensorProto.FLOAT
# Ops whose float16 form would lose range or accumulate in half precision.
FLOAT32_OPS = {"CumSum", "ReduceSum", "ReduceMax", "Exp"}


def _run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value, after onnx's shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:  # Constant nodes carry their type in the attribute
        if node.op_type == "Constant" and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _float_types(node: onnx.NodeProto, types: dict[str, int]) -> set[int]:
    names = [*node.input, *node.output]
    return {types[n] for n in names if n and types.get(n) in (FLOAT, FLOAT16)}


def _feature_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node downstream of an Exp (the feature maps) up to the Cast that ends attention."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stack = [n for n in model.graph.node if n.op_type == "Exp"]
    seen: dict[int, onnx.NodeProto] = {}
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if node.op_type != "Cast":
            stack += [c for out in node.output for c in consumers.get(out, [])]
    return list(seen.values())


@pytest.fixture(scope="module")
def fp16_exports(lm_checkpoint, encoder_checkpoint, tmp_path_factory):
    """The sample-sized LM and encoder exported in float16 (torchscript exporter: fast)."""
    checkpoints = {"lm": lm_checkpoint, "encoder": encoder_checkpoint}
    return {
        model: export(path, tmp_path_factory.mktemp(model), exporter="torchscript", dtype="fp16")
        for model, path in checkpoints.items()
    }


@pytest.mark.parametrize("model", ["lm", "encoder"])
def test_fp16_export_validates_against_the_float32_model(model, fp16_exports):
    result = fp16_exports[model]
    report = result.report
    assert report.passed, report.table()
    assert (report.atol, report.rtol) == BUDGETS["float16"]
    assert report.table().splitlines()[0].startswith("float16 export against the float32 PyTorch")
    backends = {row["backend"] for row in report.rows()}
    assert {"onnxruntime-cpu", "torchscript", "onnx-reference"} <= backends
    if model == "lm":
        assert "onnxruntime-cpu (decode)" in backends
    # Half precision really changed the numbers: the errors are float16's, not float32's.
    assert max(row["max_abs"] for row in report.rows()) > 1e-4
    manifest = result.manifest.to_json()
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    assert manifest["dtype"] == "float16"
    assert manifest["validation"]["atol"] == BUDGETS["float16"][0]


@pytest.mark.parametrize("model", ["lm", "encoder"])
def test_fp16_graph_has_half_outputs_and_float32_state(model, fp16_exports):
    result = fp16_exports[model]
    graph = onnx.load(str(result.onnx_path)).graph
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert outputs["logits"] == FLOAT16
    if model == "lm":
        # The state is a sum over the whole context: it stays float32 in and out.
        states = [s for s in result.manifest.to_json()["state"] if s["input"] != "state.offsets"]
        assert states and all(s["dtype"] == "float32" for s in states)
        assert all(inputs[s["input"]] == FLOAT and outputs[s["output"]] == FLOAT for s in states)
    dtypes = {o["name"]: o["dtype"] for o in result.manifest.to_json()["outputs"]}
    assert all(
        dtypes[name] == onnx.helper.tensor_dtype_to_np_dtype(t).name for name, t in outputs.items()
    )


def _assert_attention_runs_in_float32(onnx_model: onnx.ModelProto, causal: bool) -> None:
    types = _elem_types(onnx_model)
    nodes = onnx_model.graph.node
    half = [n.name for n in nodes if n.op_type in FLOAT32_OPS and FLOAT16 in _float_types(n, types)]
    assert half == [], f"{half} run in float16"
    island = [n for n in _feature_nodes(onnx_model) if n.op_type != "Cast"]
    assert [n.name for n in island if FLOAT16 in _float_types(n, types)] == []
    float32_ops = {n.op_type for n in island if _float_types(n, types) == {FLOAT}}
    assert "MatMul" in float32_ops  # the feature contractions
    if causal:
        assert "CumSum" in float32_ops
    # Not vacuous: the linear layers do run in float16.
    assert any(n.op_type == "MatMul" and _float_types(n, types) == {FLOAT16} for n in nodes)


@pytest.mark.parametrize("model", ["lm", "encoder"])
def test_fp16_graph_keeps_features_sums_and_cumsum_in_float32(model, fp16_exports):
    onnx_model = onnx.load(str(fp16_exports[model].onnx_path))
    _assert_attention_runs_in_float32(onnx_model, causal=model == "lm")


@pytest.mark.slow
def test_fp16_lm_with_the_dynamo_exporter(lm_checkpoint, tmp_path):
    result = export(lm_checkpoint, tmp_path, exporter="dynamo", dtype="fp16", formats="onnx")
    assert result.report.passed, result.report.table()
    _assert_attention_runs_in_float32(onnx.load(str(result.onnx_path)), causal=True)


def test_float_inputs_of_a_declared_module_become_float16(tmp_path):
    torch.manual_seed(0)
    block = TinyBlock()
    result = export(
        block, tmp_path, exporter="torchscript", dtype="float16",
        inputs=["x:batch,seq=12,16:float32"],
    )  # fmt: skip
    assert result.report.passed, result.report.table()
    graph = onnx.load(str(result.onnx_path)).graph
    assert [v.type.tensor_type.elem_type for v in graph.input] == [FLOAT16]
    assert [v.type.tensor_type.elem_type for v in graph.output] == [FLOAT16, FLOAT16]
    assert [i["dtype"] for i in result.manifest.to_json()["inputs"]] == ["float16"]
    # Re-validation rebuilds the float32 reference from the manifest's float16 declaration.
    assert validate_export(block, tmp_path).passed
    assert not validate_export(TinyBlock(), tmp_path).passed  # other weights: a miss


class CastsItsInput(TinyBlock):
    """Accepts any float dtype: the declared dtype alone decides what the graph takes."""

    def forward(self, x: torch.Tensor):
        return super().forward(x.float())


def test_a_float64_input_cannot_be_cast_to_half(tmp_path):
    with pytest.raises(ExportError, match="input 'x' is declared float64; --dtype float16 casts"):
        export(CastsItsInput(), tmp_path, dtype="fp16", inputs=["x:batch,seq,16:float64"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tolerance", [1e-6, 1e-4], ids=["tiny-budget", "float32-tolerance"])
def test_fp16_validation_fails_when_the_budget_is_too_small(tolerance, lm_checkpoint, tmp_path):
    with pytest.raises(ValidationError) as info:
        export(
            lm_checkpoint, tmp_path, exporter="torchscript", dtype="fp16",
            atol=tolerance, rtol=tolerance,
        )  # fmt: skip
    assert not info.value.report.passed
    assert "FAIL" in info.value.report.table()
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_does_not_match_a_different_float32_model(fp16_exports, tmp_path):
    torch.manual_seed(5)  # same architecture as the fixture's LM, other weights
    other = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8)
    report = validate_export(other, fp16_exports["lm"].output_dir)
    assert not report.passed


def test_long_large_norm_fp16_attention_stays_finite_and_within_budget(tmp_path):
    """n = 32768 with |q|^2 / sqrt(D) near 32: exp() of that overflows float16 (max e^11.1)."""
    dim, heads, length = 64, 2, 32768
    attention = FavorAttention(dim, 64, causal=True, chunk_size=64, seed=3)
    inputs = [f"{n}:batch,{heads},seq=128,{dim}:float32" for n in "qkv"]
    result = export(
        attention, tmp_path, formats="onnx", exporter="torchscript", dtype="fp16", inputs=inputs
    )
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, heads, length, dim, generator=generator) * 2 for _ in range(2))
    v = torch.randn(1, heads, length, dim, generator=generator)
    q, k, v = (t.half() for t in (q, k, v))
    norms = q.float().pow(2).sum(-1) / math.sqrt(dim)
    assert norms.mean() > math.log(torch.finfo(torch.float16).max) * 2  # the claimed regime
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    assert got.dtype == np.float16 and np.isfinite(got).all()
    with torch.no_grad():
        want = attention(q.float(), k.float(), v.float()).numpy()
    atol, rtol = BUDGETS["float16"]
    np.testing.assert_allclose(got.astype(np.float64), want, atol=atol, rtol=rtol)


def test_bfloat16_torchscript_validates_against_the_float32_model(lm_checkpoint, tmp_path):
    result = export(lm_checkpoint, tmp_path, dtype="bf16", formats="torchscript")
    assert result.report.passed, result.report.table()
    assert result.manifest.to_json()["dtype"] == "bfloat16"
    assert (result.report.atol, result.report.rtol) == BUDGETS["bfloat16"]
    assert {row["backend"] for row in result.report.rows()} == {"torchscript"}
    scripted = torch.jit.load(str(result.torchscript_path))
    tokens = torch.randint(0, VOCAB, (1, 5))
    state = [torch.zeros(1, dtype=torch.int64)] + [torch.zeros(1, 2, 16, 17) for _ in range(2)]
    logits, (_, *new_state) = scripted(tokens, state, return_state=True)
    assert logits.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in new_state)


def test_fp16_cli_end_to_end_and_runtime_streams(lm_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = _run(
        export_command,
        [lm_checkpoint, "-o", out, "--exporter", "torchscript", "--dtype", "fp16", "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] and payload["validation"]["passed"]
    assert "against the float32 PyTorch model" in payload["validation"]["reference"]
    manifest = json.loads((out / "lm.manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    assert manifest["dtype"] == "float16"
    assert _run(validate_command, [out, lm_checkpoint, "-q"]).exit_code == 0
    failed = _run(validate_command, [out, lm_checkpoint, "--atol", "0", "--rtol", "0"])
    assert failed.exit_code == 1 and "float16 export against the float32" in failed.stderr
    # favor.runtime feeds the float32 state back, call after call.
    session = Session(out)
    ids = Generator(session).generate([1, 2, 3], max_new_tokens=12)
    assert len(ids) == 12 and all(0 <= i < VOCAB for i in ids)


def _bad(tmp_path, lm_checkpoint) -> dict[str, tuple[list, str]]:
    traced = torch.jit.trace(TinyBlock().eval(), (torch.randn(2, 12, 16),))
    traced.save(str(tmp_path / "block.ts.pt"))
    return {
        "bf16-onnx-on-cpu": (
            [lm_checkpoint, "--dtype", "bf16", "--exporter", "torchscript"],
            "CPUExecutionProvider has no kernel for",
        ),
        "torchscript-archive": (
            [tmp_path / "block.ts.pt", "--input", "x:batch,seq,16:float32", "--dtype", "fp16"],
            "in a TorchScript archive the attention internals cannot be kept in float32",
        ),
    }


@pytest.mark.parametrize("case", ["bf16-onnx-on-cpu", "torchscript-archive"])
def test_bad_dtype_combinations_exit_2_with_one_line(case, lm_checkpoint, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, message = _bad(inputs, lm_checkpoint)[case]
    result = _run(export_command, [*args, "-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unknown_dtype_is_named(lm_checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"dtype must be one of fp32 \(float32\).*got 'fp8'"):
        export(lm_checkpoint, tmp_path, dtype="fp8")


def test_cast_model_keeps_attention_internals_float32_and_leaves_the_original():
    torch.manual_seed(0)
    lm = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8, kernel="saderf")
    half = cast_model(lm, "float16")
    internals = {
        name: tensor.dtype
        for name, tensor in [*half.named_parameters(), *half.named_buffers()]
        if ".attention." in name or ".rotary." in name
    }
    assert {"projection_matrix", "statistics", "inv_freq"} <= {n.split(".")[-1] for n in internals}
    assert set(internals.values()) == {torch.float32}
    assert half.embed.weight.dtype == half.blocks[0].ff[0].weight.dtype == torch.float16
    assert half.blocks[0].attn.q_proj.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in lm.parameters())  # the reference is untouched


def test_float32_exports_are_unchanged(lm_export):
    assert lm_export.manifest.to_json()["dtype"] == "float32"
    assert lm_export.report.reference == "" and lm_export.report.atol is None
    assert not lm_export.report.table().startswith("float")
