"""favor-run: run, bench and generate, and its errors."""

import json
import re

import numpy as np
import pytest

from favor.runtime import Session
from favor.runtime.cli import main
from tests.runtime.reference import greedy_by_recompute

VOCAB = [chr(ord("a") + i) for i in range(26)] + [" ", ".", ",", "\n"]


def _greedy_text(lm_dir, prompt, steps):
    """``steps`` greedy characters after ``prompt``, decoded without favor-run or a Generator."""
    new_ids, _ = greedy_by_recompute(Session(lm_dir), [VOCAB.index(c) for c in prompt], steps)
    return "".join(VOCAB[i] for i in new_ids)


def test_run_reads_npz_fills_state_and_writes_outputs(lm_dir, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", tokens=np.arange(12).reshape(2, 6))
    assert (
        main(
            [
                "run",
                str(lm_dir),
                "--inputs",
                str(tmp_path / "in.npz"),
                "--output",
                str(tmp_path / "out.npz"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "logits" in table and "2x6x30" in table
    with np.load(tmp_path / "out.npz") as out:
        assert out["new_state.offsets"].tolist() == [6, 6]


def test_bench_prints_a_table_with_decode_rows(lm_dir, capsys):
    assert (
        main(
            [
                "bench",
                str(lm_dir),
                "--seq",
                "1,9",
                "--context",
                "4,40",
                "--repeats",
                "2",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "call seq=9" in captured.out and "decode after 40" in captured.out
    assert "decode after a 40-token context" in captured.err


def test_generate_streams_text(lm_dir, tmp_path, capsys):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    assert (
        main(
            [
                "generate",
                str(lm_dir),
                "--vocab",
                str(tmp_path / "vocab.json"),
                "--prompt",
                "ab",
                "-n",
                "7",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "ab" + _greedy_text(lm_dir, "ab", 7) + "\n"


@pytest.fixture
def files(tmp_path):
    """Input files, good and bad, in a folder of their own (so the test can see what appears)."""
    folder = tmp_path / "files"
    folder.mkdir()
    np.save(folder / "tokens.npy", np.array([[1, 2, 3]]))
    np.save(folder / "big.npy", np.array([[1, 30, 3]]))
    np.save(folder / "scalar.npy", np.array(3))
    np.savez(folder / "scalar.npz", tokens=np.array(3))
    (folder / "empty.npz").write_bytes(b"")
    (folder / "number.json").write_text("5")
    (folder / "ints.json").write_text("[1, 2]")
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    return folder


RUN = ["run", "{dir}", "--input", "tokens={files}/tokens.npy"]
BAD_COMMANDS = {
    "missing-export": (["run", "{dir}/nope"], "export not found"),
    "bad-input-flag": (["run", "{dir}", "--input", "tokens"], "must be NAME=FILE.npy"),
    "provider": (["run", "{dir}", "--providers", "tensorrt"], "is not available"),
    "missing-vocab": (
        ["generate", "{dir}", "--vocab", "{dir}/missing.json"],
        "cannot read --vocab",
    ),
    "scalar-npy": (
        ["run", "{dir}", "--input", "tokens={files}/scalar.npy"],
        r"--input tokens: .*scalar\.npy holds a scalar; input 'tokens' has shape \(batch, seq\)",
    ),
    "scalar-in-npz": (["run", "{dir}", "--inputs", "{files}/scalar.npz"], "holds a scalar"),
    "npy-as-inputs": (["run", "{dir}", "--inputs", "{files}/tokens.npy"], "is not an .npz archive"),
    "npz-as-input": (
        ["run", "{dir}", "--input", "tokens={files}/scalar.npz"],
        "is not a .npy array",
    ),
    "empty-inputs-file": (
        ["run", "{dir}", "--inputs", "{files}/empty.npz"],
        "cannot read --inputs",
    ),
    "token-past-vocabulary": (
        ["run", "{dir}", "--input", "tokens={files}/big.npy"],
        "input 'tokens' holds token id 30",
    ),
    "vocab-a-number": (
        ["generate", "{dir}", "--vocab", "{files}/number.json"],
        "--vocab .*number.json must be a JSON list of single characters",
    ),
    "vocab-of-ints": (
        ["generate", "{dir}", "--vocab", "{files}/ints.json"],
        "must be a JSON list of single characters",
    ),
    "output-in-missing-dir": ([*RUN, "--output", "{files}/no/out.npz"], "cannot write --output"),
    "output-under-a-file": ([*RUN, "--output", "{files}/tokens.npy/o"], "cannot write --output"),
    "output-is-a-dir": ([*RUN, "--output", "{files}"], "is a directory"),
    "empty-prompt": (
        ["generate", "{dir}", "--vocab", "{files}/vocab.json", "--prompt", ""],
        "--prompt must not be empty",
    ),
    "negative-temperature": (
        ["generate", "{dir}", "--vocab", "{files}/vocab.json", "--temperature", "-1"],
        "temperature must be >= 0",
    ),
    "repeats-0": (["bench", "{dir}", "--repeats", "0"], "argument --repeats: .* >= 1, got '0'"),
    "warmup-negative": (["bench", "{dir}", "--warmup", "-5"], "argument --warmup: .* >= 0"),
    "batch-0": (["bench", "{dir}", "--batch", "0"], "argument --batch"),
    "threads-0": (["bench", "{dir}", "--threads", "0"], "argument --threads"),
    "seed-negative": (
        ["generate", "{dir}", "--vocab", "v.json", "--seed", "-1"],
        "argument --seed",
    ),
    "prefill-chunk-0": (
        ["generate", "{dir}", "--vocab", "v.json", "--prefill-chunk", "0"],
        "argument --prefill-chunk",
    ),
    "unknown-option": (["run", "{dir}", "--frobnicate"], "unrecognized arguments: --frobnicate"),
}


def _call(args, lm_dir, files):
    return main([a.format(dir=lm_dir, files=files) for a in args])


@pytest.mark.parametrize(("args", "message"), BAD_COMMANDS.values(), ids=BAD_COMMANDS.keys())
def test_errors_are_one_line_with_exit_code_2_and_write_nothing(
    lm_dir, files, args, message, capsys
):
    before = sorted(files.rglob("*"))
    assert _call(args, lm_dir, files) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
    assert sorted(files.rglob("*")) == before


@pytest.mark.parametrize(
    "args",
    [
        ["run", "{dir}/nope", "--json"],
        ["--json", "run", "{dir}/nope"],
        ["bench", "{dir}", "--repeats", "0", "--json"],
        ["run", "{dir}", "--input", "tokens={files}/scalar.npy", "--json"],
    ],
    ids=["after-command", "before-command", "usage-error", "bad-input"],
)
def test_json_failures_print_the_error_and_exit_code(lm_dir, files, args, capsys):
    assert _call(args, lm_dir, files) == 2
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["exit_code"] == 2 and payload["error"]


def test_json_reports_an_internal_error_with_exit_code_3(lm_dir, files, capsys, monkeypatch):
    def broken(self, feeds):
        raise RuntimeError("device lost")

    monkeypatch.setattr(Session, "run", broken)
    assert _call([*RUN, "--json"], lm_dir, files) == 3
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["exit_code"] == 3 and "RuntimeError: device lost" in payload["error"]
    assert len(captured.err.strip().splitlines()) == 1


def test_json_bench_reports_its_rows(lm_dir, capsys):
    args = ["bench", str(lm_dir), "--seq", "3", "--context", "5", "--repeats", "1", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["what"] for r in rows] == ["call seq=3", "decode after 5"]
    assert all(r["median_ms"] > 0 for r in rows)


def test_json_run_reports_every_output(lm_dir, files, capsys):
    assert _call([*RUN, "--json"], lm_dir, files) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is True
    shapes = {o["name"]: o["shape"] for o in payload["outputs"]}
    assert shapes["logits"] == [1, 3, 30] and shapes["new_state.offsets"] == [1]


def test_output_is_written_to_exactly_the_path_reported(lm_dir, files, tmp_path, capsys):
    target = tmp_path / "out"
    assert _call([*RUN, "--output", str(target)], lm_dir, files) == 0
    assert capsys.readouterr().err.strip() == f"wrote {target}"
    assert not (tmp_path / "out.npz").exists()
    with np.load(target) as out:
        assert out["logits"].shape == (1, 3, 30)


def test_output_replaces_a_symlink_instead_of_writing_through_it(lm_dir, files, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.npz"
    link.symlink_to(victim)
    assert _call([*RUN, "--output", str(link)], lm_dir, files) == 0
    assert victim.read_text() == "keep me"
    assert not link.is_symlink()
    with np.load(link) as out:
        assert out["new_state.offsets"].tolist() == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files", "out.npz", "victim.txt"]


@pytest.mark.parametrize("chunk", ["3", "4096"], ids=["chunked", "whole"])
def test_generate_prefills_in_chunks_to_the_same_text(lm_dir, tmp_path, capsys, chunk):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    prompt = "the quick brown fox"
    args = ["generate", str(lm_dir), "--vocab", str(tmp_path / "vocab.json"), "-q"]
    assert main([*args, "--prompt", prompt, "-n", "9", "--prefill-chunk", chunk]) == 0
    assert capsys.readouterr().out == prompt + _greedy_text(lm_dir, prompt, 9) + "\n"
