"""favor.exporter.export on models whose kernels carry calibrated parameters."""

import pytest
import torch

from favor.exporter import export, save_checkpoint
from favor.ops.calibration import calibrating
from favor.ops.models import PerformerLM


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
    layers = result.manifest["attention"]
    assert [layer["calibrated"] for layer in layers] == [calibrate, calibrate]
    if calibrate:
        assert result.warnings == []
    else:
        assert len(result.warnings) == 2 and "never calibrated" in result.warnings[0]
    # The checkpoint carries the statistics: the reloaded model is the calibrated one.
    reloaded = torch.load(checkpoint, weights_only=True)["state_dict"]
    stats = [v for k, v in reloaded.items() if k.endswith("calibration.counts")]
    assert len(stats) == 2 and all(bool((s > 0).all()) == calibrate for s in stats)
