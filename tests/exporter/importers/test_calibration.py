"""Calibration data: the next-token NLL and top-1 agreement an import's fidelity reports,
against the same figures computed here from the original's and the import's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from favor.exporter.importers import find_importer, import_module, read_calibration
from favor.runtime import Session
from tests.exporter.importers.conftest import CALIBRATION_ROWS
from tests.exporter.importers.foreign_models import MAX_LEN, performer_lm


def _figures(original: torch.Tensor, imported: torch.Tensor, rows: torch.Tensor) -> dict:
    """Both models' mean next-token NLL over ``rows (R, N)`` from their logits ``(R, N, V)``,
    and how often their argmax agree."""
    logits = {"original": original.double(), "imported": imported.double()}
    figures = {
        f"nll_{name}": float(
            functional.cross_entropy(
                value[:, :-1].reshape(-1, value.shape[-1]), rows[:, 1:].reshape(-1)
            )
        )
        for name, value in logits.items()
    }
    agree = logits["original"].argmax(-1) == logits["imported"].argmax(-1)
    return {**figures, "top1": float(agree.double().mean())}


def _logits(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(rows)


def _calibration_row(measurements: list[dict]) -> dict:
    (row,) = [m for m in measurements if m["inputs"].startswith("calibration data")]
    return row


def test_npy_token_ids_give_the_nll_and_top1_of_the_original_and_the_export(calibrated_export):
    # The import is calibrated on the ids too: its figures are the exported graph's.
    assert calibrated_export.result.exit_code == 0, calibrated_export.result.output
    manifest = json.loads((calibrated_export.out / "lm.manifest.json").read_text())
    row = _calibration_row(manifest["source"]["imported"]["measurements"])
    assert row["inputs"] == f"calibration data ({CALIBRATION_ROWS} x {MAX_LEN})"
    rows = torch.from_numpy(calibrated_export.calibration.reshape(CALIBRATION_ROWS, MAX_LEN))
    session = Session(calibrated_export.out)
    exported = session.run(tokens=rows.numpy(), **session.initial_state(CALIBRATION_ROWS))
    expected = _figures(
        _logits(calibrated_export.original, rows), torch.from_numpy(exported["logits"]), rows
    )
    assert row["nll_original"] == pytest.approx(expected["nll_original"], rel=1e-6)
    assert row["nll_imported"] == pytest.approx(expected["nll_imported"], rel=1e-5)
    # A near-tie may break the other way in onnxruntime: one position of the R x N.
    assert row["top1"] == pytest.approx(expected["top1"], abs=1.01 / rows.numel())


def test_text_is_read_as_utf8_bytes_for_a_byte_vocabulary(tmp_path):
    text = "déjà vu " * 16  # 10 bytes each: 160 bytes, two rows of MAX_LEN
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    original = performer_lm(causal=True, num_tokens=256)
    imported = import_module(original)
    ids = read_calibration(path, imported)
    assert ids.tolist() == list(text.encode("utf-8"))
    fidelity = find_importer(original).fidelity(original, imported, ids)
    (row,) = [m for m in fidelity.measurements if m.inputs.startswith("calibration data")]
    rows = torch.from_numpy(np.asarray(ids[: 2 * MAX_LEN]).reshape(2, MAX_LEN))
    expected = _figures(_logits(original, rows), _logits(imported, rows), rows)
    assert {key: getattr(row, key) for key in expected} == pytest.approx(expected, rel=1e-6)
