"""favor.exporter.export on calibrated models; validate_export trusts nothing in the export."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from favor.exporter import export, save_checkpoint, validate_export
from favor.exporter.cli import validate_command
from favor.exporter.quant_budget import INT8_BUDGET
from favor.ops.calibration import calibrating
from favor.ops.models import PerformerLM
from tests.exporter.conftest import VOCAB


@pytest.mark.parametrize("calibrate", [False, True], ids=["uncalibrated", "calibrated"])
def test_causal_saderf_lm_exports_with_its_calibration(calibrate, tmp_path):
    torch.manual_seed(0)
    lm = PerformerLM(30, 32, 2, 2, nb_features=16, chunk_size=8, kernel="saderf")
    if calibrate:
        with torch.no_grad(), calibrating(lm):
            lm(torch.randint(0, 30, (4, 64)))
    checkpoint = save_checkpoint(lm, tmp_path / "lm.pt")
    result = export(checkpoint, tmp_path / "out", exporter="torchscript")
    assert result.report is not None and result.report.passed
    layers = result.manifest.to_json()["attention"]
    assert [layer["calibrated"] for layer in layers] == [calibrate, calibrate]
    if calibrate:
        assert result.warnings == []
    else:
        assert len(result.warnings) == 2 and "never calibrated" in result.warnings[0]
    # The checkpoint carries the statistics: the reloaded model is the calibrated one.
    reloaded = torch.load(checkpoint, weights_only=True)["state_dict"]
    stats = [v for k, v in reloaded.items() if k.endswith("calibration.counts")]
    assert len(stats) == 2 and all(bool((s > 0).all()) == calibrate for s in stats)


def _tamper(manifest_path: Path) -> None:
    """Loosen every tolerance and budget the manifest records until anything would pass."""
    manifest = json.loads(manifest_path.read_text())
    loose = {"rel_rms": 1e9, "kl": 1e9, "top1": 0.0, "top1_margin": 1e9}
    manifest["validation"] |= {"atol": 1e9, "rtol": 1e9}
    if manifest["quantization"] is not None:
        manifest["quantization"]["budget"] = manifest["validation"]["budget"] = loose
    manifest_path.write_text(json.dumps(manifest))


# The export's options, and the line of favor-validate's report that says what held it.
EXPORTS = {
    "float32": ({}, "tolerances: |got - want| <= atol + rtol |want|; float32 atol 0.0001, rtol 0.0001"),
    # ONNX only: the int8 graph is all there is, so its budget alone decides.
    "int8": ({"quantize": "int8", "formats": "onnx"}, "int8 graph held to its budget: relative RMS error <= 0.1;"),
}  # fmt: skip


@pytest.mark.parametrize(("options", "held_to"), EXPORTS.values(), ids=EXPORTS.keys())
def test_favor_validate_holds_a_different_model_to_its_own_tolerances(
    options, held_to, lm_checkpoint, tmp_path
):
    out = export(lm_checkpoint, tmp_path / "export", exporter="torchscript", **options).output_dir
    _tamper(out / "lm.manifest.json")
    torch.manual_seed(5)  # the same architecture, other weights
    other = save_checkpoint(PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8),
                            tmp_path / "other.pt")  # fmt: skip

    same = CliRunner().invoke(validate_command, [str(out), str(lm_checkpoint)])
    assert same.exit_code == 0, same.output
    assert held_to in same.stderr
    swapped = CliRunner().invoke(validate_command, [str(out), str(other), "--json"])
    assert swapped.exit_code == 1, swapped.output
    validation = json.loads(swapped.stdout)["validation"]
    assert not validation["passed"]
    if "quantize" in options:
        assert validation["budget"] == INT8_BUDGET.to_json()
    else:
        assert validation["tolerances"]["float32"] == {"atol": 1e-4, "rtol": 1e-4}
    assert not validate_export(other, out).passed


@pytest.fixture(scope="module")
def float_and_int8_manifests(lm_checkpoint, tmp_path_factory):
    """A float32 export of the test LM (ONNX only), and an int8 export's manifest entry."""
    root = tmp_path_factory.mktemp("recorded")
    float32 = export(lm_checkpoint, root / "float32", exporter="torchscript", formats="onnx")
    int8 = export(
        lm_checkpoint, root / "int8", exporter="torchscript", formats="onnx", quantize="int8",
        validate_outputs=False,
    )  # fmt: skip
    return float32.output_dir, int8.manifest.to_json()["quantization"]


# Each edit of a float32 export's manifest that would change what favor-validate holds it to,
# or have it allocate without bound, and the error it must give instead.
LIES = {
    "dtype-not-a-dtype": (lambda m, q: m | {"dtype": 5}, "dtype: 5 is not one of"),
    "claims-float16": (lambda m, q: m | {"dtype": "float16"}, "records float16 weights, but its files hold float32"),
    "claims-int8": (lambda m, q: m | {"quantization": q}, "records float32 int8 weights, but its files hold float32"),
    "quantization-a-string": (lambda m, q: m | {"quantization": "x"}, "quantization: 'x' is not valid"),
    "sweep-a-number": (lambda m, q: m | {"sweep": 3}, "sweep: 3 is not of type 'array'"),
    "negative-batch": (lambda m, q: m | {"sweep": [{"batch": -1, "seq": 2}]}, "sweep[0]['batch']: -1 is less than"),
    "sweep-of-10-billion": (lambda m, q: m | {"sweep": [{"batch": 10**5, "seq": 10**5}]}, "10000000000 elements"),
}  # fmt: skip


@pytest.mark.parametrize(("lie", "message"), LIES.values(), ids=LIES.keys())
def test_favor_validate_refuses_a_manifest_that_misdescribes_its_export(
    lie, message, float_and_int8_manifests, lm_checkpoint, tmp_path
):
    source, quantization = float_and_int8_manifests
    out = tmp_path / "export"
    shutil.copytree(source, out)
    path = out / "lm.manifest.json"
    path.write_text(json.dumps(lie(json.loads(path.read_text()), quantization)))
    result = CliRunner().invoke(validate_command, [str(out), str(lm_checkpoint), "-q"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
