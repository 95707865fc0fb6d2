"""``--quantize int8``: what is quantized, the parity budget, the runtime, the CLI, atomic writes."""

import dataclasses
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn

from favor.exporter import ExportError, ValidationError, export, load_model
from favor.exporter.cli import export_command, validate_command
from favor.exporter.formats import onnx as onnx_format
from favor.exporter.manifest import SCHEMA_PATH
from favor.exporter.model_specs import exportable
from favor.exporter.quant_budget import INT8_BUDGET, ParityBudget, check_budget
from favor.exporter.quantize import (
    DEFAULT_SETTINGS,
    INT8_SCHEMES,
    QuantizationSettings,
    quantize_int8,
)
from favor.ops import FavorAttention
from favor.runtime import Generator, Session
from tests.helpers import validate_files

BUDGET_BACKEND = "onnxruntime-cpu int8"


def _linear_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Linear) for m in model.modules())


def _projections(model: nn.Module) -> list[np.ndarray]:
    return [
        m.projection_matrix.detach().numpy()
        for m in model.modules()
        if isinstance(m, FavorAttention)
    ]


def _projection_index(constant: np.ndarray, projections: list[np.ndarray]) -> int | None:
    """Which of ``projections`` ``constant`` is, bit for bit, as the MatMul operand of
    ``x @ w.T``; None if it is none of them.

    The exporters fold neither a scale nor a cast into it: the ``d**-0.25`` data normalizer
    scales ``q`` and ``k``, not ``w``.
    """
    return next((i for i, w in enumerate(projections) if np.array_equal(constant, w.T)), None)


@pytest.fixture(scope="module", params=[
    pytest.param(("lm", "torchscript"), id="lm-torchscript"),
    pytest.param(("encoder", "torchscript"), id="encoder-torchscript"),
    pytest.param(("lm", "dynamo"), id="lm-dynamo", marks=pytest.mark.slow),
    pytest.param(("encoder", "dynamo"), id="encoder-dynamo", marks=pytest.mark.slow),
])  # fmt: skip
def float_and_int8(request, lm_checkpoint, encoder_checkpoint, tmp_path_factory):
    """``(model, float graph, QuantizedGraph)`` for one reference model and torch exporter."""
    kind, exporter = request.param
    checkpoint = {"lm": lm_checkpoint, "encoder": encoder_checkpoint}[kind]
    out = tmp_path_factory.mktemp(f"float-{kind}-{exporter}")
    result = export(checkpoint, out, exporter=exporter, formats="onnx", validate_outputs=False)
    model = load_model(checkpoint).module
    graph = onnx.load(str(result.onnx_path))
    return model, graph, quantize_int8(graph, exportable(model, [])[0])


def test_linear_layers_export_as_matmul_not_einsum(float_and_int8):
    model, graph, _ = float_and_int8
    ops = Counter(node.op_type for node in graph.graph.node)
    assert ops["Einsum"] == 0  # quantize_dynamic cannot see inside an Einsum
    constants = {init.name for init in graph.graph.initializer}
    weight_products = sum(
        node.op_type in ("MatMul", "Gemm") and node.input[1] in constants
        for node in graph.graph.node
    )
    projection_products = 2 * len(_projections(model))  # phi(q) and phi(k) per layer
    assert weight_products == _linear_count(model) + projection_products


def test_only_weight_matmuls_are_quantized(float_and_int8):
    model, _, quantized = float_and_int8
    graph = quantized.model.graph
    ops = Counter(node.op_type for node in graph.node)
    linear = _linear_count(model)
    assert ops["MatMulInteger"] == linear
    assert 1 <= ops["DynamicQuantizeLinear"] <= linear  # layers reading one tensor share one
    quantized_inputs = {n.output[0] for n in graph.node if n.op_type == "DynamicQuantizeLinear"}
    assert all(n.input[0] in quantized_inputs for n in graph.node if n.op_type == "MatMulInteger")
    assert ops["Gemm"] == 0  # the encoder's classifier Gemm became a quantized MatMul
    # Every constant float MatMul left is a FavorAttention projection, one for q, one for k.
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    float_constant = [
        constants[n.input[1]]
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in constants
    ]
    projections = _projections(model)
    assert len(float_constant) == 2 * len(projections)
    found = Counter(_projection_index(c, projections) for c in float_constant)
    assert found == dict.fromkeys(range(len(projections)), 2)
    assert all(c.dtype == np.float32 for c in float_constant)
    summary = quantized.to_json()
    assert summary["quantized_matmuls"] == summary["linear_layers"] == linear
    assert all("projection_matrix" in e["reason"] for e in summary["float_constant_matmuls"])


def test_quantized_graph_keeps_interface_and_versions(float_and_int8):
    _, graph, quantized = float_and_int8
    q = quantized.model

    def interface(model):
        return [
            (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in [*model.graph.input, *model.graph.output]
        ]  # fmt: skip

    assert interface(q) == interface(graph)
    assert q.ir_version == graph.ir_version
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [
        (o.domain, o.version) for o in q.opset_import if o.domain in ("", "ai.onnx")
    ]
    onnx.checker.check_model(q, full_check=True)


def _int8_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The integer weight operand (B) of every MatMulInteger."""
    constants = {init.name: init for init in model.graph.initializer}
    return [
        numpy_helper.to_array(constants[node.input[1]])
        for node in model.graph.node
        if node.op_type == "MatMulInteger"
    ]


def _int16_pair_sums_saturate(weights: np.ndarray) -> bool:
    """Whether an AVX2/wasm U8S8 kernel could saturate on ``weights (K, N)`` int8.

    Those kernels multiply uint8 activations by int8 weights and add adjacent pairs along K into
    int16 with saturation (``vpmaddubsw``); the worst activation is 255 at both places of a pair.
    """
    w = np.abs(weights.astype(np.int64))
    w = np.concatenate([w, np.zeros((len(w) % 2, w.shape[1]), np.int64)])
    return bool((255 * (w[0::2] + w[1::2]) > np.iinfo(np.int16).max).any())


def test_default_scheme_is_exact_on_saturating_int8_kernels(float_and_int8):
    model, graph, quantized = float_and_int8
    assert quantized.settings == DEFAULT_SETTINGS
    weights = _int8_weights(quantized.model)
    assert len(weights) == _linear_count(model) and all(w.dtype == np.int8 for w in weights)
    assert not any(_int16_pair_sums_saturate(w) for w in weights)
    # Full 8-bit weights would saturate: what made the int8 graph miss its budget on AVX2.
    full_range = quantize_int8(graph, exportable(model, [])[0], INT8_SCHEMES["u8s8"])
    assert any(_int16_pair_sums_saturate(w) for w in _int8_weights(full_range.model))


@pytest.mark.parametrize("scheme", [s for s in INT8_SCHEMES if s != "u8s8"])
def test_every_int8_scheme_quantizes_what_it_says(scheme, float_and_int8):
    model, graph, _ = float_and_int8
    settings = INT8_SCHEMES[scheme]
    quantized = quantize_int8(graph, exportable(model, [])[0], settings)
    onnx.checker.check_model(quantized.model, full_check=True)
    weights = _int8_weights(quantized.model)
    kept = [
        path
        for path, sub in model.named_modules()
        if isinstance(sub, nn.Linear) and path.rsplit(".", 1)[-1] in settings.float_modules
    ]
    assert len(weights) == _linear_count(model) - len(kept)
    assert {w.dtype for w in weights} == {np.dtype(settings.weight_type)}
    assert sum("kept float by the scheme" in why for why in quantized.kept_float.values()) == len(
        kept
    )
    constants = {
        init.name: numpy_helper.to_array(init) for init in quantized.model.graph.initializer
    }
    scales = [
        constants[node.input[1]]
        for node in quantized.model.graph.node
        if node.op_type == "Mul" and node.input[1] in constants and node.input[1].endswith("scale")
    ]
    assert scales, "no weight scale found"
    assert all((s.size > 1) is settings.per_channel for s in scales)
    assert quantized.to_json()["scheme"] == scheme


@pytest.fixture(scope="module")
def int8_lm(lm_checkpoint, tmp_path_factory):
    """The test LM exported with --quantize int8 (torchscript exporter: fast), validated."""
    return export(
        lm_checkpoint, tmp_path_factory.mktemp("lm-int8"), exporter="torchscript", quantize="int8"
    )


def test_quantized_lm_passes_its_budget(int8_lm):
    report = int8_lm.report
    assert report.passed, report.table()
    rows = {(r["backend"], r["output"]): r for r in report.rows()}
    logits = rows[(BUDGET_BACKEND, "logits")]
    assert 0 < logits["rel_rms"] <= INT8_BUDGET.rel_rms and logits["kl"] <= INT8_BUDGET.kl
    assert rows[(f"{BUDGET_BACKEND} (decode)", "logits")]["passed"]
    # The float graph and TorchScript keep float32's elementwise tolerance.
    assert rows[("onnxruntime-cpu", "logits")]["max_abs"] < 1e-4
    assert rows[("torchscript", "logits")]["max_abs"] < 1e-4
    assert int8_lm.manifest.to_json()["validation"]["budget"] == INT8_BUDGET.to_json()


def test_quantized_lm_streams_through_the_runtime(int8_lm, lm_checkpoint):
    session = Session(int8_lm.output_dir, providers="cpu")
    lm = load_model(lm_checkpoint).module
    tokens = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = lm(tokens).numpy()
    state = session.initial_state(batch=2)
    pieces = []
    for start, stop in [(0, 6)] + [(t, t + 1) for t in range(6, 11)]:  # prefill, then decode
        out = session.run(tokens=tokens[:, start:stop].numpy(), **state)
        pieces.append(out["logits"])
        state = {name: out[output] for name, output in session.state}
    held = check_budget(np.concatenate(pieces, 1), want, "logits", INT8_BUDGET)
    assert held.passed, held.note
    generated = list(Generator(session).stream([1, 2, 3], max_new_tokens=12, seed=0))
    assert len(generated) == 12 and all(0 <= t < 40 for t in generated)


NODE_TESTS = Path(__file__).resolve().parent.parent / "node"


def _wasm_logits(export_dir: Path, name: str, chunks: list[list[int]]) -> list[np.ndarray]:
    """Logits of each chunk fed in turn through onnxruntime-web's wasm build (the browser's)."""
    done = subprocess.run(
        ["node", str(NODE_TESTS / "run_chunks.mjs"), str(export_dir), name, json.dumps(chunks)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    return [np.asarray(flat, np.float32) for flat in json.loads(done.stdout)["logits"]]


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_TESTS / "node_modules" / "onnxruntime-web").is_dir(),
    reason="needs node and `npm ci --ignore-scripts` in tests/node (.ci/run installs both)",
)
def test_int8_graph_runs_alike_in_the_browser_wasm_build(int8_lm):
    # wasm SIMD's int8 kernels sum pairs of products in int16, as AVX2's do; with 7-bit weights
    # neither saturates, so the browser computes what this machine's ONNX Runtime computes, up
    # to float rounding (with 8-bit weights the sample char-LM's logits differed by 12-18%).
    session = Session(int8_lm.output_dir, providers="cpu")
    low, high = session.manifest.tokens.range
    rng = np.random.default_rng(5)
    chunks = [rng.integers(low, high, 37).tolist()] + [[int(t)] for t in rng.integers(low, high, 6)]
    browser = _wasm_logits(int8_lm.output_dir, "lm", chunks)
    state = session.initial_state(1)
    for chunk, got in zip(chunks, browser, strict=True):
        out = session.run(tokens=np.asarray([chunk]), **state)
        state = {name: out[output] for name, output in session.state}
        want = out["logits"]
        assert np.isfinite(got).all() and got.size == want.size
        error = np.linalg.norm(got - want.ravel()) / np.linalg.norm(want)
        assert error < 5e-3, f"chunk of {len(chunk)}: wasm logits off by {error:.2%} (rel RMS)"


def _negate_int8_weights(path, target):
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8:
            flipped = np.clip(-numpy_helper.to_array(init).astype(np.int16), -127, 127)
            init.CopyFrom(numpy_helper.from_array(flipped.astype(np.int8), init.name))
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("tiny-budget", id="tiny-budget"),
        pytest.param("negated-weights", id="negated-int8-weights"),
    ],
)
def test_budget_check_fails_when_it_should(broken, int8_lm, lm_checkpoint, tmp_path):
    module, spec = exportable(load_model(lm_checkpoint).module, [])
    graph, budget = int8_lm.onnx_path, INT8_BUDGET
    if broken == "tiny-budget":
        budget = ParityBudget(rel_rms=1e-6, kl=1e-9, top1=1.0, top1_margin=0.0)
    else:
        graph = _negate_int8_weights(graph, tmp_path / "broken.onnx")
    int8 = dataclasses.replace(DEFAULT_SETTINGS, budget=budget)
    report = validate_files(module, spec, {"onnx": graph}, int8=int8)
    assert not report.passed
    failed = [r for r in report.rows() if not r["passed"]]
    assert {r["output"] for r in failed} >= {"logits"}
    assert all(r["backend"].startswith(BUDGET_BACKEND) for r in failed)
    assert "rel_rms" in failed[0]["note"]
    assert "FAIL" in report.table()


@pytest.mark.parametrize(
    ("got", "passed", "missed"),
    [
        pytest.param(lambda w: w.copy(), True, "", id="identical"),
        pytest.param(lambda w: w * 1.01, True, "", id="one-percent-off"),
        pytest.param(lambda w: np.roll(w, 1, axis=-1), False, "top1", id="decisive-argmax-moved"),
        pytest.param(lambda w: np.full_like(w, np.nan), False, "rel_rms", id="nan"),
        pytest.param(lambda w: w[:1], False, "shape", id="wrong-shape"),
    ],
)
def test_check_budget_on_logits(got, passed, missed):
    # Large logits with a clear winner (margin 1.0) per position: moving the winner changes the
    # prediction while the relative RMS error stays below 1%.
    want = (100.0 + np.eye(7)[np.arange(6) % 7]).reshape(2, 3, 7).astype(np.float32)
    held = check_budget(got(want), want, "logits", INT8_BUDGET)
    assert held.passed is passed, held.note
    assert missed in held.note


def _invoke(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_cli_quantize_int8_end_to_end(lm_checkpoint, tmp_path):
    result = _invoke(
        export_command,
        [
            lm_checkpoint,
            "-o",
            tmp_path,
            "--exporter",
            "torchscript",
            "--quantize",
            "int8",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert " quantize " in result.stderr
    manifest = json.loads((tmp_path / "lm.manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    quantization = manifest["quantization"]
    assert quantization["mode"] == "int8" and quantization["method"] == "dynamic"
    assert quantization["quantized_matmuls"] == quantization["linear_layers"] == 13
    assert quantization["formats"] == ["onnx"] and quantization["float_formats"] == ["torchscript"]
    assert quantization["budget"] == INT8_BUDGET.to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lm.manifest.json",
        "lm.onnx",
        "lm.torchscript.pt",
    ]  # fmt: skip  (the float graph it was quantized from is not published)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "lm.onnx")).graph.node)
    assert ops["MatMulInteger"] == 13
    # favor-validate re-checks the export against the budget stored in its manifest.
    again = _invoke(validate_command, [tmp_path, lm_checkpoint, "--json"])
    assert again.exit_code == 0, again.output
    rows = json.loads(again.stdout)["validation"]["rows"]
    assert any(r["backend"] == BUDGET_BACKEND for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--quantize", "int4"], "--quantize must be none or int8, got 'int4'", id="unknown-mode"),
        pytest.param(["--quantize", "int8", "--format", "torchscript"], "--format has no onnx", id="no-onnx"),
        pytest.param(["--quantize", "int8", "--dtype", "fp16"], "needs float32 weights", id="half-dtype"),
        pytest.param(["--quantize", "int8", "--int8-scheme", "s4"], "--int8-scheme must be one of u8s8-7bit, ", id="unknown-scheme"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_quantize_requests(args, message, lm_checkpoint, tmp_path):
    result = _invoke(export_command, [lm_checkpoint, "-o", tmp_path / "out", "-q", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("favor-export: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _crashing_quantizer(graph, module, settings):
    raise ExportError("the quantizer failed halfway")


def _hopeless_budget(graph, module, settings):
    return quantize_int8(
        graph, module, QuantizationSettings(budget=ParityBudget(1e-9, 1e-12, 1.0, 0.0))
    )


@pytest.mark.parametrize(
    ("quantizer", "error"),
    [
        pytest.param(_crashing_quantizer, ExportError, id="quantizer-fails"),
        pytest.param(_hopeless_budget, ValidationError, id="budget-missed"),
    ],
)
def test_failed_int8_export_writes_nothing(quantizer, error, lm_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "lm.onnx").write_bytes(b"the previous export")
    monkeypatch.setattr(onnx_format, "quantize_int8", quantizer)
    with pytest.raises(error):
        export(lm_checkpoint, tmp_path, exporter="torchscript", quantize="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.onnx"]  # no staging dir left
    assert (tmp_path / "lm.onnx").read_bytes() == b"the previous export"
