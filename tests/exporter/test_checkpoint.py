"""Reading model files: formats, the allow-list, and refusing to run code from a file."""

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from favor.exporter import ExportError, load_model, save_checkpoint
from favor.exporter.checkpoint import CHECKPOINT_FORMAT
from favor.exporter.cli import export_command
from favor.ops.models import PerformerLM
from tests.exporter.custom_models import TinyBlock


def test_checkpoint_round_trip_restores_the_model(lm_checkpoint):
    loaded = load_model(lm_checkpoint)
    assert loaded.source == "checkpoint" and loaded.class_path == "favor.ops.models.PerformerLM"
    torch.manual_seed(0)  # the fixture's model, rebuilt independently
    original = PerformerLM(40, 32, 2, 2, nb_features=16, chunk_size=8).eval()
    tokens = torch.randint(0, 40, (2, 11))
    torch.testing.assert_close(loaded.module(tokens), original(tokens))
    assert not loaded.module.training


def test_torchscript_archive_is_detected(tmp_path):
    traced = torch.jit.trace(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    traced.save(str(tmp_path / "m.pt"))
    assert load_model(tmp_path / "m.pt").source == "torchscript"


class Payload:
    """Unpickling this creates a file: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_never_runs_without_trust_pickle(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ExportError, match=r"pickled Python object.*--trust-pickle"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_legacy_pickle_payload_never_runs_either(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(str(marker)), protocol=2))
    with pytest.raises(ExportError):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_trusted_pickle_of_a_module_loads(tmp_path):
    torch.save(PerformerLM(10, 16, 1, 2), tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert loaded.source == "pickle" and isinstance(loaded.module, PerformerLM)


def _checkpoint_bytes(class_path: str, config: dict, state_dict: dict) -> bytes:
    buffer = io.BytesIO()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "class": class_path,
        "config": json.dumps(config),
        "state_dict": state_dict,
    }
    torch.save(payload, buffer)
    return buffer.getvalue()


def test_class_outside_the_allow_list_is_refused_until_allowed(tmp_path):
    block = TinyBlock()
    save_checkpoint(block, tmp_path / "block.pt")
    with pytest.raises(
        ExportError, match=r"outside the allowed modules \(favor\); pass --allow-module tests"
    ):
        load_model(tmp_path / "block.pt")
    loaded = load_model(tmp_path / "block.pt", allow_modules=("tests",))
    assert isinstance(loaded.module, TinyBlock)


def test_allow_list_matches_whole_module_names(tmp_path):
    (tmp_path / "m.pt").write_bytes(_checkpoint_bytes("favorite.Model", {}, {}))
    with pytest.raises(ExportError, match="outside the allowed modules"):
        load_model(tmp_path / "m.pt")


def test_state_dict_that_does_not_match_its_config_is_named(tmp_path):
    lm = PerformerLM(10, 16, 1, 2)
    config = lm.config() | {"dim": 32}
    (tmp_path / "m.pt").write_bytes(
        _checkpoint_bytes("favor.ops.models.PerformerLM", config, lm.state_dict())
    )
    with pytest.raises(ExportError, match=r"state_dict does not match the config.*size mismatch"):
        load_model(tmp_path / "m.pt")


BAD_FILES = {
    "missing": (None, "model file not found"),
    "empty": (b"", "is empty"),
    "text": (b"hello, world\n", "not a PyTorch file .* holds text"),
    "truncated-zip": ("truncate", "damaged zip archive"),
    "bare-state-dict": ("state_dict", "plain dict .* no model class"),
    "not-a-module": ("tensor", "holds a Tensor, not a model"),
}


@pytest.mark.parametrize(("content", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_get_one_line_errors(content, message, tmp_path, lm_checkpoint):
    path = tmp_path / "model.pt"
    if content == "truncate":
        path.write_bytes(lm_checkpoint.read_bytes()[:4000])
    elif content == "state_dict":
        torch.save(PerformerLM(10, 16, 1, 2).state_dict(), path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_save_checkpoint_writes_atomically(tmp_path):
    path = save_checkpoint(PerformerLM(10, 16, 1, 2), tmp_path / "lm.pt")
    assert os.listdir(tmp_path) == ["lm.pt"]
    assert path.stat().st_size > 0


# A module planted in a `favor/` folder: importing it leaves the marker file behind.
SHADOW_MODULE = """\
import pathlib

import torch

pathlib.Path({marker!r}).write_text("imported")


class Model(torch.nn.Module):
    pass
"""

# Where each planted module sits: favor itself, and inside the installed subpackages' names.
SHADOWS = {
    "favor.evil": "favor/evil.py",
    "favor.ops.evil": "favor/ops/evil.py",
    "favor.runtime.evil": "favor/runtime/evil.py",
}


def _plant(folder: Path, module_file: str, marker: Path) -> None:
    target = folder / module_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(SHADOW_MODULE.format(marker=str(marker)))


@pytest.mark.parametrize("module", SHADOWS.keys(), ids=SHADOWS.keys())
def test_a_favor_folder_on_sys_path_is_never_imported(module, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    _plant(tmp_path / "elsewhere", SHADOWS[module], marker)
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    (tmp_path / "m.pt").write_bytes(_checkpoint_bytes(f"{module}.Model", {}, {}))
    with pytest.raises(ExportError, match="not part of the installed favor packages") as info:
        load_model(tmp_path / "m.pt")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_module_the_user_allows_is_imported_from_where_it_is(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    _plant(tmp_path / "elsewhere", "favor/lab.py", marker)
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    (tmp_path / "m.pt").write_bytes(_checkpoint_bytes("favor.lab.Model", {}, {}))
    try:
        loaded = load_model(tmp_path / "m.pt", allow_modules=("favor.lab",))
    finally:
        sys.modules.pop("favor.lab", None)
    assert marker.exists() and type(loaded.module).__name__ == "Model"


def test_cli_never_imports_a_favor_folder_in_the_working_directory(tmp_path):
    # `python -c` puts the working directory first on sys.path, where `favor/` joins the
    # namespace package.
    marker = tmp_path / "imported"
    _plant(tmp_path, "favor/evil.py", marker)
    (tmp_path / "model.pt").write_bytes(_checkpoint_bytes("favor.evil.Model", {}, {}))
    cli = "from favor.exporter.cli import export_command; export_command()"
    done = subprocess.run(
        [sys.executable, "-c", cli, "model.pt", "-o", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("favor-export: error: ") and "installed favor packages" in last
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@contextlib.contextmanager
def _special_file(kind: str, folder: Path) -> Iterator[Path]:
    if kind == "char-device":
        yield Path("/dev/zero")
        return
    path = folder / "pipe"
    os.mkfifo(path)
    # A loader that opened the FIFO would wait for a writer: this one comes after 30 s and ends
    # the wait with end-of-file, so a regression fails instead of hanging the run.
    release = threading.Timer(30, lambda: open(path, "wb").close())
    release.start()
    try:
        yield path
    finally:
        release.cancel()


SPECIAL_FILES = {"char-device": "character device", "fifo": r"named pipe \(FIFO\)"}


@pytest.mark.parametrize("kind", SPECIAL_FILES.keys(), ids=SPECIAL_FILES.keys())
def test_special_files_are_refused_without_reading(kind, tmp_path):
    with (
        _special_file(kind, tmp_path) as path,
        pytest.raises(ExportError, match=f"is a {SPECIAL_FILES[kind]}, not a regular file"),
    ):
        load_model(path)


@pytest.mark.parametrize("kind", SPECIAL_FILES.keys(), ids=SPECIAL_FILES.keys())
def test_cli_refuses_special_files_at_once(kind, tmp_path):
    with _special_file(kind, tmp_path) as path:
        result = CliRunner().invoke(
            export_command, [str(path), "-o", str(tmp_path / "out")], catch_exceptions=False
        )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1].startswith(f"favor-export: error: {path} is a ")
    assert not (tmp_path / "out").exists()


LM_CONFIG = PerformerLM(10, 16, 1, 2).config()
# Big enough that building it would need tens of TiB: the check must come before allocation.
HUGE = LM_CONFIG | {"vocab_size": 2**38}
HUGE_MESSAGE = (
    r"building favor\.ops\.models\.PerformerLM from the checkpoint's config would take "
    r"[\d.]+ TiB, but its state_dict holds [\d.]+ KiB"
)
PAYLOAD_PROBLEMS = {
    "state-dict-list": (
        {"state_dict": [1, 2]},
        "damaged favor checkpoint: its state_dict is of type list, not a dict of tensors",
    ),
    "state-dict-entry-not-a-tensor": (
        {"state_dict": {"embed.weight": 3}},
        "damaged favor checkpoint: its state_dict entry 'embed.weight' is of type int, not a tensor",
    ),
    "config-not-an-object": (
        {"config": "[16, 2]"},
        "damaged favor checkpoint: its config is not a JSON object",
    ),
    "newer-format": (
        {"format": "favor-checkpoint/2"},
        "newer format, favor-checkpoint/2; this version reads favor-checkpoint/1",
    ),
    "huge-config": ({"config": json.dumps(HUGE)}, HUGE_MESSAGE),
    # sgq draws its quadrature rule with numpy, which cannot join meta tensors.
    "huge-config-host-drawn-projection": (
        {"config": json.dumps(HUGE | {"projection": "sgq", "nb_features": 17})},
        HUGE_MESSAGE,
    ),
}


@pytest.mark.parametrize(
    ("overrides", "message"), PAYLOAD_PROBLEMS.values(), ids=PAYLOAD_PROBLEMS.keys()
)
def test_bad_checkpoint_contents_get_one_line_errors(overrides, message, tmp_path):
    payload = {
        "format": CHECKPOINT_FORMAT,
        "class": "favor.ops.models.PerformerLM",
        "config": json.dumps(LM_CONFIG),
        "state_dict": PerformerLM(10, 16, 1, 2).state_dict(),
    }
    torch.save(payload | overrides, tmp_path / "m.pt")
    with pytest.raises(ExportError, match=message) as info:
        load_model(tmp_path / "m.pt")
    assert "\n" not in str(info.value)


def test_checkpoint_with_host_drawn_projection_round_trips(tmp_path):
    lm = PerformerLM(10, 16, 1, 2, projection="sgq", nb_features=17).eval()
    loaded = load_model(save_checkpoint(lm, tmp_path / "sgq.pt"))
    tokens = torch.randint(0, 10, (1, 5))
    torch.testing.assert_close(loaded.module(tokens), lm(tokens))
