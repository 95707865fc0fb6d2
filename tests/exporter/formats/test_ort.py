"""``--format ort``: the ORT-format model beside the ONNX graph, validated and revalidated like
any format, float16 files the size of the float16 graph, outputs equal to the graph's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

from favor.exporter import ExportError, export, validate_export
from favor.exporter.cli import export_command
from favor.exporter.formats import FORMAT_REGISTRY, Format
from favor.exporter.formats.base import check_requires, register_format
from favor.exporter.manifest import spec_from_manifest
from favor.ops.models import PerformerLM
from favor.runtime.manifest import sha256_file
from tests.conftest import SAMPLE_LM
from tests.exporter.conftest import VOCAB

# How each export under test is made; the tiny models' chunk size is 8.
EXPORTS = {
    "lm-fp32": ("lm", {}),
    "lm-fp16": ("lm", {"dtype": "fp16"}),
    "lm-int8": ("lm", {"quantize": "int8"}),
    "encoder-fp32": ("encoder", {}),
}
# Where ORT format and ONNX graph are the same optimized graph, bit for bit; a float16 file
# keeps its weights float16 and casts them in each call (exporter/formats/ort.py), so its
# matmuls run on other buffers and round in another order.
BIT_EXACT = {"lm-fp32", "lm-int8", "encoder-fp32"}
# An ORT file's own magic number, at bytes 4-8 of the flatbuffer.
ORT_MAGIC = b"ORTM"


@pytest.fixture(scope="module", params=list(EXPORTS))
def exported(request, lm_checkpoint, encoder_checkpoint, tmp_path_factory):
    """``(case id, model path, export result)``: an onnx + ort export, validated."""
    model, options = EXPORTS[request.param]
    checkpoint = {"lm": lm_checkpoint, "encoder": encoder_checkpoint}[model]
    out = tmp_path_factory.mktemp(request.param)
    result = export(checkpoint, out, formats="onnx,ort", exporter="torchscript", **options)
    return request.param, checkpoint, result


def test_the_sweep_runs_through_the_ort_file(exported):
    case, _, result = exported
    path = result.files["ort"]
    assert path == result.output_dir / f"{path.stem}.ort"
    assert path.read_bytes()[4:8] == ORT_MAGIC
    entry = result.manifest.files["ort"]
    assert (entry.path, entry.sha256, entry.bytes) == (
        path.name,
        sha256_file(path),
        path.stat().st_size,
    )
    runner = "onnxruntime-cpu ort int8" if case == "lm-int8" else "onnxruntime-cpu ort"
    checks = [c for c in result.report.checks if c.backend.startswith(runner)]
    assert checks and all(c.passed for c in checks)
    sweep = spec_from_manifest(result.manifest).sweep
    swept = {c.case for c in checks if c.backend == runner}
    assert swept == {f"batch={size['batch']} seq={size['seq']}" for size in sweep}
    decoded = {c.backend for c in checks} - {runner}
    assert decoded == ({f"{runner} (decode)"} if case.startswith("lm") else set())
    if case == "lm-int8":  # the .ort is converted from the int8 graph: int8 too
        assert result.manifest.quantization["formats"] == ["onnx", "ort"]


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one reduction order, as validation runs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _same(case, expected, actual, what):
    for name, want, got in zip(expected, expected.values(), actual.values(), strict=True):
        if case in BIT_EXACT:
            np.testing.assert_array_equal(got, want, err_msg=f"{what}: {name}")
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{what}: {name}")


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 7), (1, 8), (2, 9), (1, 37)])
def test_ort_outputs_equal_the_onnx_outputs(exported, batch, seq):
    case, _, result = exported
    graph, converted = _session(result.files["onnx"]), _session(result.files["ort"])
    spec = spec_from_manifest(result.manifest)
    names = [t.name for t in spec.inputs]
    feeds = {
        n: t.numpy() for n, t in zip(names, spec.sample({"batch": batch, "seq": seq}), strict=True)
    }
    outputs = [o.name for o in graph.get_outputs()]
    expected = dict(zip(outputs, graph.run(outputs, feeds), strict=True))
    _same(case, expected, dict(zip(outputs, converted.run(outputs, feeds), strict=True)), "prompt")
    # Decode steps from the state the prompt left, each file carrying the ONNX graph's state.
    for step in range(3):
        state = {s.input: expected[s.output] for s in result.manifest.state}
        if not state:
            break
        tokens = np.full((batch, 1), (step * 7) % VOCAB, np.int64)
        feeds = {names[0]: tokens, **state}
        expected = dict(zip(outputs, graph.run(outputs, feeds), strict=True))
        actual = dict(zip(outputs, converted.run(outputs, feeds), strict=True))
        _same(case, expected, actual, f"decode step {step}")


def test_favor_validate_runs_the_ort_file(exported):
    _, checkpoint, result = exported
    report = validate_export(checkpoint, result.output_dir)
    ort_rows = {row["backend"] for row in report.rows() if " ort" in row["backend"]}
    assert report.passed and ort_rows == {
        c.backend for c in result.report.checks if " ort" in c.backend
    }


def test_favor_validate_fails_the_ort_file_of_another_model(lm_checkpoint, tmp_path):
    result = export(lm_checkpoint, tmp_path / "export", formats="onnx,ort",
                    exporter="torchscript", validate_outputs=False)  # fmt: skip
    # An .ort of another model, listed with its own sha256: only validation can tell.
    torch.manual_seed(5)
    other = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8).eval()
    elsewhere = export(other, tmp_path / "other", name="lm", formats="onnx,ort",
                       exporter="torchscript", validate_outputs=False)  # fmt: skip
    target = result.files["ort"]
    shutil.copyfile(elsewhere.files["ort"], target)
    manifest_path = result.manifest_path
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["ort"] |= {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    report = validate_export(lm_checkpoint, result.output_dir)
    failed = {row["backend"] for row in report.rows() if not row["passed"]}
    assert failed == {"onnxruntime-cpu ort", "onnxruntime-cpu ort (decode)"}


def _initializer_bytes_onnx(path):
    """``{dtype name: bytes}`` of a graph's initializers, read with onnx."""
    total: dict[str, int] = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(tensor)
        total[array.dtype.name] = total.get(array.dtype.name, 0) + array.nbytes
    return total


def _initializer_bytes_ort(path):
    """``{dtype name: bytes}`` of an ORT file's initializers, read from its flatbuffer."""
    buffer = path.read_bytes()
    graph = InferenceSession.InferenceSession.GetRootAs(buffer, 0).Model().Graph()
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    total: dict[str, int] = {}
    for i in range(graph.InitializersLength()):
        tensor = graph.Initializers(i)
        name = names.get(tensor.DataType(), "other")
        total[name] = total.get(name, 0) + tensor.RawDataLength()
    return total


def test_float16_ort_keeps_the_float16_weights_and_the_graphs_size(tmp_path):
    result = export(SAMPLE_LM, tmp_path, formats="onnx,ort", exporter="torchscript",
                    dtype="fp16", validate_outputs=False)  # fmt: skip
    graph, converted = result.files["onnx"], result.files["ort"]
    in_graph, in_file = _initializer_bytes_onnx(graph), _initializer_bytes_ort(converted)
    assert in_graph["float16"] > 1_000_000  # the weights
    # Every float16 weight is kept (constant folding may add a few float16 scalars).
    assert in_graph["float16"] <= in_file["float16"] <= in_graph["float16"] + 64
    # No float32 copies: what float32 there is, is the attention's (kept float32 in the graph).
    assert in_file.get("float32", 0) <= in_graph["float32"]
    assert converted.stat().st_size < 1.15 * graph.stat().st_size


def test_ort_without_onnx_is_a_one_line_error(lm_checkpoint, tmp_path):
    with pytest.raises(ExportError) as info:
        export(lm_checkpoint, tmp_path / "out", formats="ort,torchscript")
    assert str(info.value) == "--format ort converts the ONNX graph, and --format has no onnx"
    assert not (tmp_path / "out").exists()


def test_bfloat16_ort_is_a_one_line_error(lm_checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"^--format ort .* no bfloat16 kernels; [^\n]*$"):
        export(lm_checkpoint, tmp_path / "out", formats="onnx,ort", dtype="bf16")
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_the_ort_file_and_refuses_it_alone(lm_checkpoint, tmp_path):
    runner = CliRunner()
    args = [str(lm_checkpoint), "--exporter", "torchscript", "--no-validate", "-o"]
    alone = runner.invoke(export_command, [*args, str(tmp_path / "alone"), "--format", "ort"])
    assert alone.exit_code == 2
    errors = [line for line in alone.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--format has no onnx" in errors[0]
    both = runner.invoke(export_command, [*args, str(tmp_path / "both"), "--format", "onnx,ort"])
    assert both.exit_code == 0, both.output
    assert (tmp_path / "both" / f"{lm_checkpoint.stem}.ort").is_file()


class _Needs(Format):
    """A format built from the ``torchscript`` format's files."""

    name = "needs"
    requires = {"torchscript": "reads the archive"}  # noqa: RUF012


def test_requirements_are_checked_by_name_and_registered_first(monkeypatch):
    monkeypatch.setitem(FORMAT_REGISTRY, "needs", _Needs)
    check_requires(["torchscript", "needs"])
    with pytest.raises(
        ExportError, match=r"^--format needs reads the archive, and --format has no torchscript$"
    ):
        check_requires(["onnx", "needs"])
    monkeypatch.delitem(FORMAT_REGISTRY, "needs")
    monkeypatch.delitem(FORMAT_REGISTRY, "torchscript")
    with pytest.raises(ValueError, match="requires torchscript, which must be registered first"):
        register_format(_Needs)
    assert "needs" not in FORMAT_REGISTRY
