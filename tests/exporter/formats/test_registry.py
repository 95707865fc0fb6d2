"""A format is one registered object: export builds, validates, hashes and publishes its files,
and favor-validate rebuilds it from the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from favor.exporter import ExportError, ValidationError, export, validate_export
from favor.exporter.formats import FORMAT_REGISTRY, Built, ExportJob, Format
from favor.exporter.model_specs import FlatOutputs
from favor.exporter.specs import ModelSpec
from favor.exporter.validation import Runner
from favor.runtime.manifest import sha256_file

DECLARATION = ["x:batch,4:float32"]


class WeightsFormat(Format):
    """The module's state_dict, run by loading it into a fresh ``nn.Linear(4, 3)``.

    ``offset`` is added to every output: a format whose files compute the wrong thing.
    """

    name = "weights"
    offset = 0.0

    @classmethod
    def from_options(cls, options, exporter: str) -> Format:
        return cls()

    @classmethod
    def from_manifest(cls, manifest) -> Format | None:
        return cls() if "weights" in manifest.files else None

    def file_names(self, name: str) -> dict[str, str]:
        return {"weights": f"{name}.weights.pt"}

    def build(self, job: ExportJob) -> Built:
        path = job.stage / self.file_names(job.name)["weights"]
        torch.save(job.module.state_dict(), path)
        return Built({"weights": path}, self.runners({"weights": path}, job.spec))

    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        module = FlatOutputs(nn.Linear(4, 3))
        module.load_state_dict(torch.load(files["weights"], weights_only=True))

        def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
            with torch.no_grad():
                return [module(*inputs)[0].numpy() + self.offset]

        return [Runner("weights", run)]


class WrongWeightsFormat(WeightsFormat):
    offset = 1.0


@pytest.fixture
def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3).eval()


def test_a_registered_format_is_built_validated_hashed_and_revalidated(
    linear, tmp_path, monkeypatch
):
    monkeypatch.setitem(FORMAT_REGISTRY, "weights", WeightsFormat)
    result = export(linear, tmp_path, name="m", inputs=DECLARATION, formats="onnx,weights")
    assert result.files["weights"] == tmp_path / "m.weights.pt"
    entry = result.manifest.files["weights"]
    assert entry.path == "m.weights.pt" and entry.sha256 == sha256_file(tmp_path / "m.weights.pt")
    assert {"weights", "onnxruntime-cpu"} <= {row["backend"] for row in result.report.rows()}
    report = validate_export(linear, tmp_path)
    assert report.passed and "weights" in {row["backend"] for row in report.rows()}


def test_a_format_whose_files_are_wrong_fails_the_export_and_writes_nothing(
    linear, tmp_path, monkeypatch
):
    monkeypatch.setitem(FORMAT_REGISTRY, "weights", WrongWeightsFormat)
    with pytest.raises(ValidationError) as info:
        export(linear, tmp_path, name="m", inputs=DECLARATION, formats="onnx,weights")
    failed = {row["backend"] for row in info.value.report.rows() if not row["passed"]}
    assert failed == {"weights"}
    assert list(tmp_path.iterdir()) == []


def test_an_unregistered_format_is_refused_naming_the_registered_ones(linear, tmp_path):
    registered = ", ".join(FORMAT_REGISTRY)
    assert registered.startswith("onnx, ")  # the order formats are built in
    with pytest.raises(ExportError, match=f"subset of {registered}, got 'weights'"):
        export(linear, tmp_path, inputs=DECLARATION, formats="weights")
