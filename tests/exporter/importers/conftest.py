"""A causal performer-pytorch LM, pickled and exported through favor-export once without and
once with calibration data, shared by the CLI, calibration, leak and validation tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from favor.exporter.cli import export_command
from tests.exporter.importers.foreign_models import MAX_LEN, VOCAB, performer_lm

# Calibration ids: exactly 4 rows of max_seq_len tokens, so the rows measured are known.
CALIBRATION_ROWS = 4


def run_cli(command, args) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@dataclass
class CausalExport:
    original: nn.Module  # the performer-pytorch PerformerLM
    model_file: Path  # pickled with torch.save(model)
    result: Result
    out: Path
    calibration: np.ndarray | None = None  # --calibration-data, (CALIBRATION_ROWS * MAX_LEN,)


@pytest.fixture(scope="session")
def causal_lm() -> nn.Module:
    return performer_lm(causal=True)


@pytest.fixture(scope="session")
def causal_lm_file(causal_lm, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("performer-lm") / "lm.pt"
    torch.save(causal_lm, path)
    return path


def _exported(original: nn.Module, model_file: Path, root: Path, *options: object) -> CausalExport:
    out = root / "out"
    args = [model_file, "--trust-pickle", "-o", out, "--exporter", "torchscript", *options]
    return CausalExport(original, model_file, run_cli(export_command, args), out)


@pytest.fixture(scope="session")
def causal_export(causal_lm, causal_lm_file, tmp_path_factory) -> CausalExport:
    """``favor-export lm.pt --trust-pickle`` (torchscript exporter)."""
    return _exported(causal_lm, causal_lm_file, tmp_path_factory.mktemp("performer-lm-export"))


@pytest.fixture(scope="session")
def calibrated_export(causal_lm, causal_lm_file, tmp_path_factory) -> CausalExport:
    """The same with ``--calibration-data ids.npy``: random ids, CALIBRATION_ROWS x MAX_LEN."""
    root = tmp_path_factory.mktemp("performer-lm-calibrated")
    ids = np.random.default_rng(3).integers(0, VOCAB, CALIBRATION_ROWS * MAX_LEN)
    np.save(root / "ids.npy", ids)
    exported = _exported(causal_lm, causal_lm_file, root, "--calibration-data", root / "ids.npy")
    exported.calibration = ids
    return exported
