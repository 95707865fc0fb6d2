"""favor-export and favor-validate end to end: CLI runner, real subprocesses, bad input."""

import hashlib
import inspect
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from favor.exporter import ExportError, ValidationError, assert_parity, export, save_checkpoint
from favor.exporter.cli import export_command, validate_command
from favor.exporter.manifest import SCHEMA_PATH
from favor.exporter.onnx_graph import EXPORTERS, onnxruntime_limits
from favor.exporter.options import ExportOptions
from favor.exporter.precision import parse_dtype
from favor.exporter.quantize import int8_settings, parse_quantize
from favor.runtime import Session
from tests.exporter.custom_models import TinyBlock

HIGHEST = onnxruntime_limits()[0]
BIN = Path(sys.executable).parent


def _run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def _tree(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("opset", [17, HIGHEST], ids=["opset17", "highest"])
@pytest.mark.parametrize("model", ["lm", "encoder"])
def test_export_end_to_end(model, opset, exporter, lm_checkpoint, encoder_checkpoint, tmp_path):
    checkpoint = {"lm": lm_checkpoint, "encoder": encoder_checkpoint}[model]
    result = _run(
        export_command,
        [checkpoint, "-o", tmp_path, "--opset", opset, "--exporter", exporter, "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] and payload["validation"]["passed"]
    stem = checkpoint.stem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{stem}.onnx", f"{stem}.torchscript.pt", f"{stem}.manifest.json"]
    )
    manifest = json.loads((tmp_path / f"{stem}.manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    assert manifest["opset"] == opset and manifest["exporter"] == exporter
    backends = {row["backend"] for row in manifest["validation"]["rows"]}
    assert {"onnxruntime-cpu", "torchscript", "onnx-reference"} <= backends
    if model == "lm":
        assert "onnxruntime-cpu (decode)" in backends
    # The progress output names every stage.
    for stage in ("load", "export", "check", "trace", "validate", "write"):
        assert f" {stage} " in result.stderr


def test_export_in_a_real_subprocess_is_deterministic(lm_checkpoint, tmp_path):
    trees = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run(
            [BIN / "favor-export", lm_checkpoint, "-o", out, "--exporter", "torchscript", "-q"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # --quiet
        trees.append(_tree(out))
    assert trees[0] == trees[1]


def test_torchscript_loads_where_favor_cannot_be_imported(lm_export):
    script = (
        "import sys; sys.modules['favor'] = None\n"
        "import torch\n"
        f"m = torch.jit.load({str(lm_export.torchscript_path)!r})\n"
        "kv = [torch.zeros(2, 2, 16, 17) for _ in range(2)]\n"
        "state = [torch.zeros(2, dtype=torch.long), *kv]\n"
        "logits, new_state = m(torch.randint(0, 40, (2, 30)), state, return_state=True)\n"
        "print(tuple(logits.shape))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 30, 40)"


def test_help_teaches_with_examples():
    result = _run(export_command, ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--input x:batch,seq=128,256:float32" in result.output
    assert "Exit codes" in _run(validate_command, ["--help"]).output


def test_format_and_name_choose_the_files(lm_checkpoint, tmp_path):
    result = _run(
        export_command,
        [
            lm_checkpoint,
            "-o",
            tmp_path,
            "--format",
            "onnx",
            "--name",
            "tiny",
            "--exporter",
            "torchscript",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.manifest.json", "tiny.onnx"]


def test_declared_inputs_export_any_allowed_module(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(TinyBlock(), tmp_path / "block.pt")
    out = tmp_path / "out"
    args = [
        tmp_path / "block.pt",
        "-o",
        out,
        "--allow-module",
        "tests",
        "--input",
        "x:batch,seq=12,16:float32",
        "--exporter",
        "torchscript",
    ]
    result = _run(export_command, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "block.manifest.json").read_text())
    assert [o["shape"] for o in manifest["outputs"]] == [["batch", "seq", 16], ["batch", 16]]
    assert (
        _run(
            validate_command, [out, tmp_path / "block.pt", "--allow-module", "tests", "-q"]
        ).exit_code
        == 0
    )


def test_a_torchscript_archive_exports_with_declared_inputs(lm_export, tmp_path):
    block = torch.jit.trace(TinyBlock().eval(), (torch.randn(2, 12, 16),))
    block.save(str(tmp_path / "block.ts.pt"))
    result = _run(
        export_command,
        [
            tmp_path / "block.ts.pt",
            "-o",
            tmp_path / "out",
            "--input",
            "x:batch,seq=12,16:float32",
            "--format",
            "onnx",
        ],
    )
    assert result.exit_code == 0, result.output


def test_validation_failure_exits_1_and_writes_nothing(lm_checkpoint, tmp_path):
    result = _run(
        export_command,
        [lm_checkpoint, "-o", tmp_path, "--exporter", "torchscript", "--atol", "0", "--rtol", "0"],
    )
    assert result.exit_code == 1
    assert (
        "FAIL" in result.stderr and "does not match PyTorch; nothing was written" in result.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_favor_validate_reports_for_ci(lm_export, lm_checkpoint, tmp_path):
    junit = tmp_path / "parity.xml"
    result = _run(
        validate_command, [lm_export.output_dir, lm_checkpoint, "--json", "--junit-xml", junit]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
    assert "<testsuite" in junit.read_text() and 'failures="0"' in junit.read_text()
    failed = _run(
        validate_command,
        [lm_export.output_dir, lm_checkpoint, "--atol", "0", "--rtol", "0", "--junit-xml", junit],
    )
    assert failed.exit_code == 1
    assert "FAIL" in failed.stderr and "<failure" in junit.read_text()


def test_assert_parity_is_pytest_friendly(lm_export, lm_checkpoint):
    assert assert_parity(lm_checkpoint, lm_export.output_dir).passed
    with pytest.raises(AssertionError, match=r"(?s)does not match PyTorch:.*FAIL"):
        assert_parity(lm_checkpoint, lm_export.output_dir, atol=0.0, rtol=0.0)


def test_python_api_raises_validation_error_with_the_report(lm_checkpoint, tmp_path):
    with pytest.raises(ValidationError) as info:
        export(lm_checkpoint, tmp_path, exporter="torchscript", atol=0.0, rtol=0.0)
    assert not info.value.report.passed


def test_edited_export_is_caught_by_its_sha256(lm_checkpoint, tmp_path):
    export(lm_checkpoint, tmp_path, exporter="torchscript", formats="onnx", validate_outputs=False)
    with open(tmp_path / "lm.onnx", "ab") as handle:
        handle.write(b"\0")
    result = _run(validate_command, [tmp_path, lm_checkpoint])
    assert result.exit_code == 2
    assert "lm.onnx does not match the sha256 in lm.manifest.json" in result.stderr


def _bad_inputs(tmp_path: Path, lm_checkpoint: Path) -> dict[str, tuple[list, str]]:
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a model\n")
    (tmp_path / "trunc.pt").write_bytes(lm_checkpoint.read_bytes()[:5000])
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    save_checkpoint(TinyBlock(), tmp_path / "block.pt")
    (tmp_path / "file").write_text("x")
    return {
        "missing": ([tmp_path / "nope.pt"], "model file not found"),
        "empty": ([tmp_path / "empty.pt"], "is empty"),
        "text": ([tmp_path / "text.pt"], "not a PyTorch file"),
        "truncated": ([tmp_path / "trunc.pt"], "damaged zip archive"),
        "pickle": ([tmp_path / "pickled.pt"], "unpickling can run arbitrary code"),
        "not-allowed": ([tmp_path / "block.pt"], "outside the allowed modules"),
        "opset-low": ([lm_checkpoint, "--opset", "9"], "opset 9 is below"),
        "opset-high": (
            [lm_checkpoint, "--opset", str(HIGHEST + 1)],
            f"above {HIGHEST}, the highest",
        ),
        "unwritable": (
            [lm_checkpoint, "-o", tmp_path / "file" / "sub"],
            "cannot create output directory",
        ),
        "input-spec": (
            [tmp_path / "block.pt", "--allow-module", "tests", "--input", "x:batch"],
            "must look like NAME:DIMS:DTYPE",
        ),
        "no-input-spec": (
            [tmp_path / "block.pt", "--allow-module", "tests"],
            "declare each with --input",
        ),
        "bad-format": ([lm_checkpoint, "--format", "onnx,tflite"], "format must be"),
    }


BAD_IDS = [
    "missing",
    "empty",
    "text",
    "truncated",
    "pickle",
    "not-allowed",
    "opset-low",
    "opset-high",
    "unwritable",
    "input-spec",
    "no-input-spec",
    "bad-format",
]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_input_exits_2_with_one_line_and_no_files(case, tmp_path, lm_checkpoint):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, message = _bad_inputs(inputs, lm_checkpoint)[case]
    before = _tree(inputs)
    out = [] if "-o" in args else ["-o", tmp_path / "out"]
    result = _run(export_command, [*args, *out])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert _tree(inputs) == before
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    result = _run(export_command, [tmp_path / "nope.pt", "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.stderr


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


def test_a_directory_in_the_way_leaves_the_previous_export_intact_and_loadable(
    lm_checkpoint, encoder_checkpoint, tmp_path
):
    export(encoder_checkpoint, tmp_path, name="lm", exporter="torchscript", formats="onnx")
    before = _tree(tmp_path)
    (tmp_path / "lm.torchscript.pt").mkdir()
    result = _run(export_command, [lm_checkpoint, "-o", tmp_path, "--exporter", "torchscript"])
    assert result.exit_code == 2, result.output
    assert "lm.torchscript.pt: a directory is in the way" in _error_lines(result.stderr)[0]
    (tmp_path / "lm.torchscript.pt").rmdir()
    assert _tree(tmp_path) == before
    assert Session(tmp_path).manifest.kind == "encoder"


# Subprocesses under a file-size limit: a shell starts them with SIGXFSZ's default action.
UNDER_LIMIT = (
    "import os, resource, signal, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@pytest.mark.parametrize(
    ("options", "file"),
    [
        (["--format", "onnx"], "lm.onnx"),
        (["--format", "torchscript"], "lm.torchscript.pt"),
        (["--format", "onnx", "--external-data", "always"], "lm.onnx"),
    ],
    ids=["onnx", "torchscript", "external-data"],
)
def test_a_file_size_limit_is_bad_environment_not_a_crash(options, file, lm_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    command = [BIN / "favor-export", lm_checkpoint, "-o", out, "--exporter", "torchscript"]
    done = subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, *command, *options],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert _error_lines(done.stderr) == [
        f"favor-export: error: cannot write {out / file}: File too large"
    ]
    assert list(out.iterdir()) == []  # no staging directory left


@pytest.mark.parametrize(
    ("signal_number", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["sigint", "sigterm"],
)
def test_a_signal_mid_export_cleans_up(signal_number, code, said, lm_checkpoint, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [BIN / "favor-export", lm_checkpoint, "-o", out, "--exporter", "dynamo", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stderr:
        if " export " in line:  # torch's dynamo exporter has started: it takes many seconds
            break
    time.sleep(2)
    assert [p.name[:14] for p in out.iterdir()] == [".favor-export-"]
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert json.loads(stdout) == {"ok": False, "exit_code": code, "error": said}
    assert f"favor-export: {said}; nothing was written" in stderr
    assert not out.exists()


def _interrupted_inside_torch(*_args, **_kwargs):
    """What torch's dynamo exporter made of a Ctrl-C during a lazy import."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'") from None
    except AttributeError as error:
        raise ExportError("the model cannot be exported to ONNX: AttributeError") from error


def test_an_interrupt_wrapped_by_torch_is_reported_as_an_interrupt(monkeypatch, tmp_path):
    monkeypatch.setattr("favor.exporter.api.export", _interrupted_inside_torch)
    result = _run(export_command, [tmp_path / "lm.pt"])
    assert result.exit_code == 130
    assert result.stderr.strip() == "favor-export: interrupted; nothing was written"


@pytest.mark.parametrize("existing", [False, True], ids=["new-directories", "existing-directory"])
def test_a_failed_export_leaves_no_new_directory(existing, lm_checkpoint, tmp_path):
    out = tmp_path / "new" / "out"
    if existing:
        out.mkdir(parents=True)
    args = [lm_checkpoint, "-o", out, "--exporter", "torchscript", "--format", "onnx"]
    result = _run(export_command, [*args, "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 1, result.output
    if existing:
        assert list(out.iterdir()) == []
    else:
        assert list(tmp_path.iterdir()) == []


def test_every_published_file_gets_the_permissions_of_a_plain_open(lm_checkpoint, tmp_path):
    args = [lm_checkpoint, "-o", tmp_path, "--exporter", "torchscript", "--external-data", "always"]
    umask = os.umask(0o022)
    try:
        result = _run(export_command, [*args, "--no-validate", "-q"])
    finally:
        os.umask(umask)
    assert result.exit_code == 0, result.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    expected = ["lm.manifest.json", "lm.onnx", "lm.onnx.data", "lm.torchscript.pt"]
    assert modes == dict.fromkeys(expected, 0o644)


@pytest.mark.parametrize(
    ("model_name", "options"),
    [("lm.onnx", []), ("lm.torchscript.pt", ["--name", "lm"])],
    ids=["default-name", "given-name"],
)
def test_exporting_over_the_model_file_is_refused(model_name, options, lm_checkpoint, tmp_path):
    model = tmp_path / model_name
    shutil.copy(lm_checkpoint, model)
    before = _tree(tmp_path)
    result = _run(export_command, [model, *options, "--exporter", "torchscript"])
    assert result.exit_code == 2, result.output
    assert f"the output file {model} is the model being exported" in result.stderr
    assert _tree(tmp_path) == before


class Branches(nn.Module):
    """Branches on data in forward: torch.export cannot capture it."""

    def config(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


def test_an_exporter_error_names_its_root_cause(tmp_path):
    save_checkpoint(Branches(), tmp_path / "branches.pt")
    args = [tmp_path / "branches.pt", "--allow-module", "tests", "--input", "x:batch,4:float32"]
    result = _run(export_command, [*args, "--format", "onnx", "-o", tmp_path / "out", "--debug"])
    assert result.exit_code == 2, result.output
    line = result.stderr.splitlines()[-1]
    assert line.startswith("favor-export: error: the model cannot be exported to ONNX: ")
    assert "Could not guard on data-dependent expression" in line, line
    assert "Modify the model code" not in line
    # --debug shows the whole chain, torch's wrapper included.
    assert "TorchExportError" in result.stderr and "direct cause" in result.stderr


def _never_called(*_args, **_kwargs):
    raise AssertionError("a bad tolerance must be refused before any work")


@pytest.mark.parametrize("value", ["-1e-4", "nan", "inf"], ids=["negative", "nan", "infinite"])
@pytest.mark.parametrize("option", ["--atol", "--rtol"], ids=["atol", "rtol"])
@pytest.mark.parametrize("command", [export_command, validate_command], ids=["export", "validate"])
def test_a_tolerance_that_cannot_hold_is_refused_at_once(
    command, option, value, monkeypatch, tmp_path
):
    monkeypatch.setattr("favor.exporter.api.export", _never_called)
    monkeypatch.setattr("favor.exporter.api.validate_export", _never_called)
    args = [tmp_path / "lm.pt"] if command is export_command else [tmp_path, tmp_path / "lm.pt"]
    result = _run(command, [*args, option, value])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # a usage error is one line, like any other bad input
    assert f"Invalid value for '{option}': {value} is not a tolerance" in lines[0]


def _raises(error: BaseException):
    def call(*_args, **_kwargs):
        raise error

    return call


JSON_FAILURES = {
    "bad-input": (export_command, ["{dir}/nope.pt"], None, 2),
    "usage": (export_command, ["{checkpoint}", "--atol", "-1"], None, 2),
    "internal": (export_command, ["{checkpoint}"], RuntimeError("a bug"), 3),
    "interrupted": (export_command, ["{checkpoint}"], KeyboardInterrupt(), 130),
    "mismatch": (validate_command, ["{export}", "{checkpoint}", "--atol", "0", "--rtol", "0"], None, 1),
    "validate-usage": (validate_command, ["{export}", "{checkpoint}", "--rtol", "nan"], None, 2),
}  # fmt: skip


@pytest.mark.parametrize("case", JSON_FAILURES, ids=JSON_FAILURES)
def test_json_failures_print_one_object_with_the_error_and_exit_code(
    case, monkeypatch, lm_checkpoint, lm_export, tmp_path
):
    command, args, error, code = JSON_FAILURES[case]
    if error is not None:
        monkeypatch.setattr("favor.exporter.api.export", _raises(error))
    places = {"dir": tmp_path, "checkpoint": lm_checkpoint, "export": lm_export.output_dir}
    result = _run(command, [*(a.format(**places) for a in args), "--json"])
    assert result.exit_code == code, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == code and payload["error"]
    assert ("validation" in payload) == (case == "mismatch")


# How export() reads the arguments that favor-export spells its own way.
API_READS = {
    "formats": lambda formats: ExportOptions(formats=formats).formats,
    "dtype": parse_dtype,
    "quantize": parse_quantize,
    "int8_scheme": int8_settings,
}
OPTION_ARGUMENTS = [
    name
    for name in inspect.signature(export).parameters
    if name not in ("model", "output_dir", "progress")
]


@pytest.mark.parametrize("argument", OPTION_ARGUMENTS, ids=OPTION_ARGUMENTS)
def test_an_option_left_out_means_the_apis_default(argument, monkeypatch, tmp_path):
    passed = {}

    def record(_model, _output_dir, **kwargs):
        passed.update(kwargs)
        raise ExportError("recorded")

    monkeypatch.setattr("favor.exporter.api.export", record)
    assert _run(export_command, [tmp_path / "lm.pt"]).exit_code == 2
    read = API_READS.get(argument, lambda value: value)
    default = inspect.signature(export).parameters[argument].default
    assert read(passed[argument]) == read(default)


def test_the_cli_offers_the_apis_exporters():
    (option,) = [param for param in export_command.params if param.name == "exporter"]
    assert tuple(option.type.choices) == EXPORTERS
