"""favor-export and favor-validate on performer-pytorch models: the pickle route, the
state_dict route, --no-import, and the configurations and inputs that are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from favor.exporter.cli import export_command, validate_command
from favor.exporter.importers import import_module
from favor.runtime import Generator, Session
from tests.exporter.importers.conftest import run_cli
from tests.exporter.importers.foreign_models import (
    LM_SIZES,
    MAX_LEN,
    VOCAB,
    performer_lm,
    performer_stack,
)


def _manifest(directory: Path) -> dict:
    (path,) = directory.glob("*.manifest.json")
    return json.loads(path.read_text())


def _check_refused(result, phrase: str, out: Path) -> None:
    """Exit 2, one error line containing ``phrase``, no traceback, nothing written."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and phrase in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []


def test_a_pickled_performer_lm_exports_as_a_stateful_causal_lm(causal_export):
    result = causal_export.result
    assert result.exit_code == 0, result.output
    assert " import " in result.stderr and "CompatLM" in result.stderr
    manifest = _manifest(causal_export.out)
    assert manifest["kind"] == "causal-lm"
    assert [t["name"] for t in manifest["inputs"]] == [
        "tokens",
        "state.offsets",
        "state.0",
        "state.1",
    ]
    imported = manifest["source"]["imported"]
    assert imported["class"] == "favor.ops.performer_compat.CompatLM"
    assert imported["original"].startswith("performer_pytorch.") and not imported["exact"]
    labels = [m["inputs"] for m in imported["measurements"]]
    assert any(label.startswith("random tokens") for label in labels)
    assert all(m["max_rel"] >= 0 and 0 <= m["top1"] <= 1 for m in imported["measurements"])


def _greedy(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by recomputing the whole sequence each step."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist()


PROMPTS = {"short": [1, 2, 3], "longer": [5, 9, 12, 30, 7, 7, 0, 39, 2, 4, 11]}


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS)
def test_the_export_decodes_as_the_imported_model_does(causal_export, prompt):
    steps = 30
    assert len(prompt) + steps <= MAX_LEN
    expected = _greedy(import_module(causal_export.original), prompt, steps)
    assert Generator(Session(causal_export.out)).generate(prompt, steps) == expected


def test_a_pickled_model_without_trust_pickle_is_refused(causal_lm_file, tmp_path):
    result = run_cli(export_command, [causal_lm_file, "-o", tmp_path / "out"])
    _check_refused(result, "--trust-pickle", tmp_path / "out")


def test_favor_validate_re_imports_the_pickled_model(causal_export):
    result = run_cli(
        validate_command, [causal_export.out, causal_export.model_file, "--trust-pickle"]
    )
    assert result.exit_code == 0, result.output
    assert "onnxruntime-cpu (decode)" in result.stderr


def test_favor_validate_of_a_calibrated_import_needs_the_same_data(calibrated_export, tmp_path):
    args = [calibrated_export.out, calibrated_export.model_file, "--trust-pickle"]
    missing = run_cli(validate_command, args)
    assert missing.exit_code == 2
    assert "pass the same file with --calibration-data" in missing.stderr
    other = tmp_path / "other.npy"
    np.save(other, calibrated_export.calibration[::-1].copy())
    wrong = run_cli(validate_command, [*args, "--calibration-data", other])
    assert wrong.exit_code == 2
    assert "is not the file" in wrong.stderr
    same = run_cli(
        validate_command, [*args, "--calibration-data", calibrated_export.out.parent / "ids.npy"]
    )
    assert same.exit_code == 0, same.output


# --- the state_dict route ---------------------------------------------------------------------


def _kwargs_file(directory: Path, **kwargs: object) -> Path:
    path = directory / "kwargs.json"
    path.write_text(json.dumps(kwargs))
    return path


def test_a_state_dict_and_its_kwargs_export_what_the_pickle_route_exports(causal_export, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(causal_export.original.state_dict(), weights)
    kwargs = _kwargs_file(tmp_path, **LM_SIZES, causal=True)
    out = tmp_path / "out"
    result = run_cli(
        export_command,
        [weights, "--import-as", "performer_pytorch.PerformerLM", "--import-kwargs", kwargs,
         "-o", out, "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tokens = np.random.default_rng(4).integers(0, VOCAB, (2, MAX_LEN))
    logits = []
    for directory in (out, causal_export.out):
        session = Session(directory)
        logits.append(session.run(tokens=tokens, **session.initial_state(2))["logits"])
    assert np.abs(logits[0] - logits[1]).max() <= 1e-5 * np.abs(logits[1]).max()
    source = _manifest(out)["source"]
    assert source["format"] == "state-dict" and source["class"] == "performer_pytorch.PerformerLM"


def _other_shape(directory: Path) -> Path:
    path = directory / "other.pt"
    torch.save(performer_lm(causal=True, dim_head=8).state_dict(), path)
    return path


def _matching(directory: Path) -> Path:
    path = directory / "weights.pt"
    torch.save(performer_lm(causal=True).state_dict(), path)
    return path


def _ids(values: np.ndarray):
    """Saves ``values`` as ``ids.npy`` in a directory it is given."""

    def save(directory: Path) -> Path:
        np.save(directory / "ids.npy", values)
        return directory / "ids.npy"

    return save


GOOD_KWARGS = {**LM_SIZES, "causal": True}
# (state_dict file, kwargs, calibration file or None, phrase in the error)
BAD_STATE_DICT_ROUTES = {
    "unknown-kwarg": (_matching, {**GOOD_KWARGS, "bogus": 1}, None, "bogus"),
    "refused-kwarg": (_matching, {**LM_SIZES, "reversible": True}, None, "reversible"),
    "weights-of-another-shape": (_other_shape, GOOD_KWARGS, None, "do not fit"),
    # Calibration compares with the original, which this route never builds.
    "calibration-data": (_matching, GOOD_KWARGS, _ids(np.arange(VOCAB)), "--calibration-data"),
}


@pytest.mark.parametrize(
    ("weights", "kwargs", "calibration", "phrase"),
    BAD_STATE_DICT_ROUTES.values(),
    ids=BAD_STATE_DICT_ROUTES,
)
def test_a_state_dict_route_that_cannot_work_is_refused(
    weights, kwargs, calibration, phrase, tmp_path
):
    out = tmp_path / "out"
    args = [weights(tmp_path), "--import-as", "performer_pytorch.PerformerLM", "-o", out]
    args += ["--import-kwargs", _kwargs_file(tmp_path, **kwargs)]
    if calibration is not None:
        args += ["--calibration-data", calibration(tmp_path)]
    _check_refused(run_cli(export_command, args), phrase, out)


# --- --no-import -----------------------------------------------------------------------------


def test_no_import_exports_the_original_through_the_generic_path(tmp_path):
    model_file = tmp_path / "stack.pt"
    torch.save(performer_stack(), model_file)
    out = tmp_path / "out"
    result = run_cli(
        export_command,
        [model_file, "--trust-pickle", "--no-import", "--input", "x:batch,seq=16,32:float32",
         "-o", out, "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert " import " not in result.stderr
    source = _manifest(out)["source"]
    assert "imported" not in source and source["class"].startswith("performer_pytorch.")


# --- refused configurations ------------------------------------------------------------------


def _relu_feed_forward() -> nn.Module:
    # performer-pytorch has no activation option; a model edited after construction has one.
    model = performer_lm()
    model.performer.net.layers[0][1].fn.fn.act = nn.ReLU()
    return model


# (model, the option the error names)
REFUSED = {
    "reversible": (lambda: performer_lm(reversible=True), "reversible"),
    "local-attention-heads": (lambda: performer_lm(local_attn_heads=1), "local_attn_heads"),
    "axial-positions": (
        lambda: performer_lm(axial_position_emb=True, rotary_position_emb=False),
        "axial_position_emb",
    ),
    "shift-tokens": (lambda: performer_lm(causal=True, shift_tokens=True), "shift_tokens"),
    "cross-attend": (lambda: performer_stack(cross_attend=True), "cross_attend"),
    "elu-kernel": (
        lambda: performer_lm(generalized_attention=True, kernel_fn=nn.ELU()),
        "kernel_fn",
    ),
    "relu-feed-forward": (_relu_feed_forward, "activation"),
}


@pytest.mark.parametrize(("model", "option"), REFUSED.values(), ids=REFUSED)
def test_a_configuration_favor_cannot_reproduce_is_refused_naming_the_option(
    model, option, tmp_path
):
    model_file = tmp_path / "model.pt"
    torch.save(model(), model_file)
    out = tmp_path / "out"
    result = run_cli(export_command, [model_file, "--trust-pickle", "-o", out])
    _check_refused(result, f"{option}=", out)
    assert "--no-import" in result.stderr


# --- calibration data that cannot be used ------------------------------------------------------


def _text(directory: Path) -> Path:
    path = directory / "text.txt"
    path.write_text("plain text\n")
    return path


# (calibration file, extra options, phrase in the error)
BAD_CALIBRATION = {
    "text-for-a-small-vocabulary": (_text, [], ".npy"),
    "ids-outside-the-vocabulary": (_ids(np.arange(VOCAB + 1)), [], f"[0, {VOCAB})"),
    "float-values": (_ids(np.linspace(0, 1, 10)), [], "not token ids"),
    "with-no-import": (_ids(np.arange(VOCAB)), ["--no-import"], "--no-import"),
}


@pytest.mark.parametrize(
    ("calibration", "options", "phrase"), BAD_CALIBRATION.values(), ids=BAD_CALIBRATION
)
def test_unusable_calibration_data_is_refused(
    calibration, options, phrase, causal_lm_file, tmp_path
):
    out = tmp_path / "out"
    args = [causal_lm_file, "--trust-pickle", "--calibration-data", calibration(tmp_path)]
    result = run_cli(export_command, [*args, *options, "-o", out])
    _check_refused(result, phrase, out)
