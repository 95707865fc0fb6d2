"""Session and Generator on an export's ORT-format model (``--format onnx,ort``)."""

import json
import shutil

import numpy as np
import pytest
import torch

from favor.exporter import export
from favor.ops.models import PerformerLM
from favor.runtime import Generator, ManifestError, Session
from favor.runtime.cli import main
from tests.runtime.conftest import VOCAB
from tests.runtime.reference import greedy_by_recompute

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # longer than one chunk (8)


@pytest.fixture(scope="module")
def ort_dir(tiny_lm, tmp_path_factory):
    """The tiny LM exported with both model files (validation is the format tests' job)."""
    out = tmp_path_factory.mktemp("runtime-lm-ort")
    export(tiny_lm, out, name="lm", formats="onnx,ort", exporter="torchscript",
           validate_outputs=False)  # fmt: skip
    return out


@pytest.fixture
def ort_only_dir(ort_dir, tmp_path):
    """The export as an app ships it to a phone: the ``.ort`` and a manifest listing only it."""
    target = tmp_path / "ort-only"
    shutil.copytree(ort_dir, target)
    (target / "lm.onnx").unlink()
    manifest_path = target / "lm.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["onnx"]
    manifest_path.write_text(json.dumps(manifest))
    return target


def _torch_picks(lm, prompt, generated):
    """The ids PyTorch's argmax picks after each prefix of ``prompt + generated``: ``generated``
    itself for a greedy decode of ``lm``."""
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        return lm(ids)[0, len(prompt) - 1 : -1].argmax(-1).tolist()


def test_the_ort_file_runs_as_the_onnx_graph_does(ort_dir, tiny_lm):
    converted, graph = Session(ort_dir, model="ort", threads=1), Session(ort_dir, threads=1)
    assert (converted.model, converted.model_path) == ("ort", ort_dir / "lm.ort")
    assert (graph.model, graph.model_path) == ("onnx", ort_dir / "lm.onnx")
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 21))
    out = converted.run(tokens=tokens, **converted.initial_state(2))
    with torch.no_grad():
        expected = tiny_lm(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-5)
    reference = graph.run(tokens=tokens, **graph.initial_state(2))
    for name, value in reference.items():  # one optimized graph, one thread: the same bits
        np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_generator_decodes_the_same_greedy_ids_from_the_ort_file(ort_dir, tiny_lm):
    from_ort = Generator(Session(ort_dir, model="ort", threads=1)).generate(PROMPT, 30)
    assert from_ort == Generator(Session(ort_dir, model="onnx", threads=1)).generate(PROMPT, 30)
    assert from_ort == greedy_by_recompute(Session(ort_dir, model="ort"), PROMPT, 30)[0]
    assert from_ort == _torch_picks(tiny_lm, PROMPT, from_ort)


def test_an_export_without_its_onnx_graph_loads_the_ort_file(ort_only_dir, tiny_lm):
    session = Session(ort_only_dir)
    assert (session.model, session.model_path.name) == ("ort", "lm.ort")
    generated = Generator(session).generate(PROMPT, 12)
    assert generated == _torch_picks(tiny_lm, PROMPT, generated)
    with pytest.raises(ManifestError, match=r"lm\.manifest\.json lists no ONNX file"):
        Session(ort_only_dir, model="onnx")


def test_asking_for_a_file_the_export_lacks_names_the_format_to_add(lm_dir):
    with pytest.raises(
        ManifestError, match=r"lists no ORT file \(export with --format onnx,ort\)$"
    ):
        Session(lm_dir, model="ort")


def test_an_unknown_model_file_is_a_value_error(ort_dir):
    with pytest.raises(ValueError, match=r"^model must be one of onnx, ort, got 'tflite'$"):
        Session(ort_dir, model="tflite")


@pytest.fixture
def swapped_dir(ort_dir, tmp_path):
    """The export with its ``.ort`` replaced by another model's (and listed with its sha256):
    the two files give different logits, so the one loaded shows."""
    torch.manual_seed(7)
    other = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8).eval()
    elsewhere = export(other, tmp_path / "other", name="lm", formats="onnx,ort",
                       exporter="torchscript", validate_outputs=False)  # fmt: skip
    target = tmp_path / "swapped"
    shutil.copytree(ort_dir, target)
    shutil.copyfile(elsewhere.files["ort"], target / "lm.ort")
    manifest_path = target / "lm.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["ort"] = elsewhere.manifest.files["ort"].to_json()
    manifest_path.write_text(json.dumps(manifest))
    return target


def test_favor_run_loads_the_file_model_names(swapped_dir, tmp_path, capsys):
    tokens = np.arange(12).reshape(2, 6) % VOCAB
    np.savez(tmp_path / "in.npz", tokens=tokens)
    args = ["run", str(swapped_dir), "--inputs", str(tmp_path / "in.npz")]
    for model in ("ort", "onnx"):
        assert main([*args, "--model", model, "--output", str(tmp_path / f"{model}.npz")]) == 0
        session = Session(swapped_dir, model=model)
        expected = session.run(tokens=tokens, **session.initial_state(2))["logits"]
        with np.load(tmp_path / f"{model}.npz") as out:
            np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "ort.npz") as converted, np.load(tmp_path / "onnx.npz") as graph:
        assert np.abs(converted["logits"] - graph["logits"]).max() > 1e-2
    capsys.readouterr()
    assert main([*args, "--model", "tflite"]) == 2
    assert "argument --model: invalid choice: 'tflite'" in capsys.readouterr().err
