"""Healing a causal import: distillation from the original brings it closer, is reported before
and after, and makes the export one that re-importing cannot reproduce."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from favor.exporter.cli import export_command, validate_command
from favor.exporter.importers import import_module
from favor.exporter.importers.heal import heal
from favor.ops import CompatAttention
from tests.exporter.importers.conftest import run_cli
from tests.exporter.importers.foreign_models import MAX_LEN, VOCAB, performer_lm


def _kl(original, model, tokens) -> float:
    """Mean KL(original || model) of the next-token distributions, computed here."""
    with torch.no_grad():
        p = F.log_softmax(original(tokens), -1)
        q = F.log_softmax(model(tokens), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_healing_lowers_the_divergence_from_the_original():
    original = performer_lm(causal=True)
    imported = import_module(original)
    # Key shifts 3 off performer's maxima: the eps terms weigh otherwise, a gap to heal.
    for layer in (m for m in imported.modules() if isinstance(m, CompatAttention)):
        layer.set_key_shift(layer.key_shift + 3.0)
    ids = np.random.default_rng(0).integers(0, VOCAB, 20 * MAX_LEN)
    held_out = torch.from_numpy(np.random.default_rng(1).integers(0, VOCAB, (4, MAX_LEN)))
    before = _kl(original, imported, held_out)
    healed = heal(original, imported, ids, 40, max_length=MAX_LEN)
    assert _kl(original, healed, held_out) < 0.8 * before
    assert _kl(original, imported, held_out) == before  # the import itself is left as it was


def test_heal_steps_report_before_and_after_and_refuse_revalidation(tmp_path):
    original = performer_lm(causal=True)
    model_file, ids_file = tmp_path / "lm.pt", tmp_path / "ids.npy"
    torch.save(original, model_file)
    np.save(ids_file, np.random.default_rng(2).integers(0, VOCAB, 8 * MAX_LEN))
    out = tmp_path / "out"
    common = ["--trust-pickle", "--exporter", "torchscript", "--calibration-data", ids_file]
    result = run_cli(export_command, [model_file, "-o", out, *common, "--heal-steps", "5"])
    assert result.exit_code == 0, result.output
    assert "step 5/5: KL" in result.stderr and "after healing 5 steps:" in result.stderr
    imported = json.loads((out / "lm.manifest.json").read_text())["source"]["imported"]
    assert imported["healed"]["steps"] == 5 and imported["healed"]["before"]
    refused = run_cli(
        validate_command, [out, model_file, *common[:1], "--calibration-data", ids_file]
    )
    assert refused.exit_code == 2
    assert "was healed (distilled for 5 steps)" in refused.stderr


def test_heal_steps_need_calibration_data(tmp_path):
    model_file = tmp_path / "lm.pt"
    torch.save(performer_lm(causal=True), model_file)
    result = run_cli(export_command, [model_file, "--trust-pickle", "--heal-steps", "3"])
    assert result.exit_code == 2
    assert "--heal-steps distills on --calibration-data" in result.stderr
