"""Reading model files: formats, the allow-list, and refusing to run code from a file."""

import io
import json
import os
import pickle

import pytest
import torch

from favor.exporter import ExportError, load_model, save_checkpoint
from favor.exporter.checkpoint import CHECKPOINT_FORMAT
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
