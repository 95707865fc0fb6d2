"""Session: loading, provider choice, input checks, thread safety."""

import json
import shutil
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch

from favor.runtime import ManifestError, Session


def test_run_matches_pytorch_and_accepts_dict_or_keywords(lm_dir, tiny_lm):
    session = Session(lm_dir)
    tokens = np.random.default_rng(0).integers(0, 30, (2, 21))
    by_kwargs = session.run(tokens=tokens, **session.initial_state(2))
    by_dict = session.run({"tokens": tokens, **session.initial_state(2)})
    with torch.no_grad():
        expected = tiny_lm(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(by_kwargs["logits"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(by_dict["logits"], by_kwargs["logits"])
    assert by_kwargs["new_state.offsets"].tolist() == [21, 21]


@pytest.mark.parametrize("path", ["dir", "onnx", "manifest"])
def test_opens_from_dir_onnx_or_manifest(lm_dir, path):
    target = {"dir": lm_dir, "onnx": lm_dir / "lm.onnx", "manifest": lm_dir / "lm.manifest.json"}[
        path
    ]
    assert Session(target).onnx_path == lm_dir / "lm.onnx"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu sees CUDA"
)
def test_auto_provider_is_cpu_without_onnxruntime_gpu(lm_dir):
    session = Session(lm_dir)
    assert session.providers == ["CPUExecutionProvider"]
    assert session.device == "cpu"


def test_cpu_provider_is_cpu_only(lm_dir):
    assert Session(lm_dir, providers="cpu").providers == ["CPUExecutionProvider"]


def test_unavailable_provider_lists_the_available_ones(lm_dir):
    with pytest.raises(
        ValueError,
        match=r"TensorrtExecutionProvider is not available .*available: .*CPUExecutionProvider",
    ):
        Session(lm_dir, providers="tensorrt")


def test_a_manifest_listing_tensors_in_another_order_runs_by_name(permuted_lm_dir, tiny_lm):
    session = Session(permuted_lm_dir)
    assert session.inputs[0].name != "tokens"
    tokens = np.random.default_rng(2).integers(0, 30, (2, 9))
    out = session.run(tokens=tokens, **session.initial_state(2))
    with torch.no_grad():
        expected = tiny_lm(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-5)
    assert out["new_state.offsets"].tolist() == [9, 9]


def _feeds(session, batch=2, length=5):
    return {"tokens": np.zeros((batch, length), np.int64), **session.initial_state(batch)}


BAD_FEEDS = {
    "unknown-name": (lambda f: f | {"ids": f["tokens"]}, "unknown input ids"),
    "missing-name": (
        lambda f: {k: v for k, v in f.items() if k != "state.0"},
        "missing input state.0",
    ),
    "dtype": (
        lambda f: f | {"tokens": f["tokens"].astype(np.int32)},
        "input 'tokens' must be int64, got int32",
    ),
    "rank": (
        lambda f: f | {"tokens": f["tokens"][0]},
        r"input 'tokens' must have rank 2 \(batch, seq\), got shape \(5,\)",
    ),
    "fixed-dim": (
        lambda f: f | {"state.1": np.zeros((2, 2, 16, 5), np.float32)},
        "axis 3 must be 17",
    ),
    "batch-disagrees": (
        lambda f: f | {"state.0": np.zeros((3, 2, 16, 17), np.float32)},
        "has batch=3 but input 'tokens' has batch=2",
    ),
    "empty-seq": (
        lambda f: f | {"tokens": np.zeros((2, 0), np.int64)},
        r"axis 1 \(seq\) must be >= 1",
    ),
    "negative-token": (
        lambda f: f | {"tokens": np.array([[1, 2, 3, 4, 5], [1, 2, -1, 4, 5]])},
        r"input 'tokens' holds token id -1, outside the vocabulary \[0, 30\)",
    ),
    "token-past-vocabulary": (
        lambda f: f | {"tokens": np.full((2, 5), 30)},
        r"input 'tokens' holds token id 30, outside the vocabulary \[0, 30\)",
    ),
}


@pytest.mark.parametrize(("edit", "message"), BAD_FEEDS.values(), ids=BAD_FEEDS.keys())
def test_bad_inputs_are_value_errors_before_onnxruntime_sees_them(lm_dir, edit, message):
    session = Session(lm_dir)
    with pytest.raises(ValueError, match=message):
        session.run(edit(_feeds(session)))


def _copy(lm_dir, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(lm_dir, target)
    return target


def test_manifest_that_does_not_match_the_graph_is_refused(lm_dir, tmp_path):
    export_dir = _copy(lm_dir, tmp_path)
    manifest_path = export_dir / "lm.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["dtype"] = "int32"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        ManifestError,
        match="the manifest says input 'tokens' is int32, the graph says tensor\\(int64\\)",
    ):
        Session(export_dir)


def test_changed_graph_is_caught_by_sha256(lm_dir, tmp_path):
    export_dir = _copy(lm_dir, tmp_path)
    with open(export_dir / "lm.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"lm\.onnx does not match the sha256"):
        Session(export_dir)


MISSING = {
    "no-dir": (lambda d: d / "nope", "export not found"),
    "no-onnx": (lambda d: d / "nope.onnx", "model not found"),
    "no-manifest": (
        lambda d: (d / "lm.manifest.json").unlink() or d / "lm.onnx",
        "no manifest beside lm.onnx",
    ),
}


@pytest.mark.parametrize(("target", "message"), MISSING.values(), ids=MISSING.keys())
def test_missing_files_are_named(lm_dir, tmp_path, target, message):
    with pytest.raises(ManifestError, match=message):
        Session(target(_copy(lm_dir, tmp_path)))


def test_bad_options_are_named(lm_dir):
    with pytest.raises(ValueError, match="optimization must be one of"):
        Session(lm_dir, optimization="max")
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Session(lm_dir, threads=0)


def test_concurrent_runs_match_sequential_runs(lm_dir):
    session = Session(lm_dir, threads=1)
    rng = np.random.default_rng(1)
    feeds = [
        {"tokens": rng.integers(0, 30, (1, n)), **session.initial_state(1)}
        for n in (3, 9, 17, 40, 64, 5)
    ]
    sequential = [session.run(f)["logits"] for f in feeds]
    results = [None] * len(feeds)

    def worker(i):
        for _ in range(5):
            results[i] = session.run(feeds[i])["logits"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("token", [-1, 30], ids=["negative", "past-vocabulary"])
def test_encoder_tokens_are_checked_against_the_vocabulary(encoder_dir, token):
    session = Session(encoder_dir)
    tokens = np.ones((1, 4), np.int64)
    tokens[0, 2] = token
    with pytest.raises(ValueError, match=f"input 'tokens' holds token id {token}"):
        session.run(tokens=tokens, key_padding_mask=np.zeros((1, 4), bool))


def test_encoder_session_runs_with_a_padding_mask(encoder_dir):
    session = Session(encoder_dir)
    mask = np.zeros((2, 12), bool)
    mask[1, 7:] = True
    out = session.run(tokens=np.ones((2, 12), np.int64), key_padding_mask=mask)
    assert out["logits"].shape == (2, 3)
