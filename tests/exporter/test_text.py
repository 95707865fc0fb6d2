"""Exports carry their text handling: given with ``text=``/``--text``, or found beside the model."""

from __future__ import annotations

import json
import shutil
import string

import pytest
from torch import nn

from favor.exporter import ExportError, export
from favor.exporter.cli import export_command
from favor.runtime import Session
from tests.exporter.conftest import VOCAB
from tests.exporter.test_cli import _run
from tests.runtime.conftest import train_tokenizer

CHARACTERS = list(string.ascii_letters)[:VOCAB]
FAST = {"exporter": "torchscript", "formats": "onnx", "validate_outputs": False}


@pytest.fixture
def model_dir(lm_checkpoint, tmp_path):
    """A folder holding the test LM's checkpoint, for files to be put beside it."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(lm_checkpoint, folder / "lm.pt")
    return folder


def _write(path, content):
    path.write_text(json.dumps(content))
    return path


def _exported_text(out, name="lm"):
    """``(kind, file content)`` of the text an export carries, ``(None, None)`` for none."""
    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    if manifest["text"] is None:
        return None, None
    return manifest["text"]["kind"], (out / manifest["files"]["text"]["path"]).read_text()


def test_a_given_vocabulary_is_copied_hashed_and_recorded(model_dir, tmp_path):
    vocab = _write(tmp_path / "chars.json", CHARACTERS)
    out = tmp_path / "out"
    result = export(model_dir / "lm.pt", out, text=vocab, **FAST)
    assert result.files["text"] == out / "lm.vocab.json"
    assert _exported_text(out) == ("characters", vocab.read_text())
    assert Session(out).text.decode([0, 1, 2]) == "abc"


def test_a_vocabulary_beside_the_model_is_taken_without_asking(model_dir, tmp_path):
    _write(model_dir / "vocab.json", CHARACTERS)
    messages = []
    export(model_dir / "lm.pt", tmp_path / "out", progress=lambda *m: messages.append(m), **FAST)
    assert _exported_text(tmp_path / "out")[0] == "characters"
    assert ("text", f"{model_dir / 'vocab.json'} (characters, {VOCAB} tokens)") in messages


def test_the_first_file_beside_the_model_that_fits_is_taken(model_dir, tmp_path):
    _write(model_dir / "lm.vocab.json", CHARACTERS[:5])  # tried first, does not fit
    _write(model_dir / "tokenizer.json", {"version": "1.0"})  # not a tokenizer: skipped
    _write(model_dir / "vocab.json", CHARACTERS[::-1])
    messages = []
    export(model_dir / "lm.pt", tmp_path / "out", progress=lambda *m: messages.append(m), **FAST)
    assert _exported_text(tmp_path / "out") == ("characters", json.dumps(CHARACTERS[::-1]))
    left_out = [m for stage, m in messages if stage == "text" and m.startswith("left out")]
    assert left_out == [
        f"left out: lm.vocab.json (beside the model) holds 5 tokens, and the model's "
        f"vocabulary has {VOCAB}"
    ]


def test_no_text_carries_nothing_even_beside_the_model(model_dir, tmp_path):
    _write(model_dir / "vocab.json", CHARACTERS)
    export(model_dir / "lm.pt", tmp_path / "out", text=False, **FAST)
    assert _exported_text(tmp_path / "out") == (None, None)
    assert not (tmp_path / "out" / "lm.vocab.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (CHARACTERS[:10], f"holds 10 tokens, and the model's vocabulary has {VOCAB}"),
        ({"a": 0}, "neither a character vocabulary"),
        (["ab", "c"], "single characters"),
    ],
    ids=["wrong-size", "not-a-vocabulary", "not-characters"],
)
def test_a_given_file_that_does_not_fit_stops_the_export(model_dir, tmp_path, content, message):
    bad = _write(tmp_path / "bad.json", content)
    with pytest.raises(ExportError, match=message):
        export(model_dir / "lm.pt", tmp_path / "out", text=bad, **FAST)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_may_be_smaller_than_the_embedding(model_dir, tmp_path):
    path = tmp_path / "tokenizer.json"
    train_tokenizer("metaspace", VOCAB - 3).save(str(path))
    export(model_dir / "lm.pt", tmp_path / "out", text=path, **FAST)
    assert _exported_text(tmp_path / "out") == ("tokenizer.json", path.read_text())


def test_a_model_without_token_ids_has_no_use_for_text(tmp_path):
    vocab = _write(tmp_path / "chars.json", CHARACTERS)
    with pytest.raises(ExportError, match="a module model that takes no token ids"):
        export(nn.Linear(4, 3), tmp_path / "out", inputs=["x:batch,4:float32"], text=vocab, **FAST)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "{dir}/chars.json", "--no-text"], "--text and --no-text contradict"),
        (["--text", "{dir}/missing.json"], "missing.json"),
    ],
    ids=["contradiction", "missing-file"],
)
def test_bad_text_options_are_one_line_errors(model_dir, tmp_path, args, message):
    _write(model_dir / "chars.json", CHARACTERS)
    result = _run(
        export_command,
        [model_dir / "lm.pt", "-o", tmp_path / "out", *(a.format(dir=model_dir) for a in args)],
    )
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
