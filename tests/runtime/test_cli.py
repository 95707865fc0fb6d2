"""favor-run: run, bench and generate, and its errors."""

import json

import numpy as np
import pytest

from favor.runtime.cli import main


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
    vocab = [chr(ord("a") + i) for i in range(26)] + [" ", ".", ",", "\n"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
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
    text = capsys.readouterr().out
    assert text.startswith("ab") and len(text.rstrip("\n")) >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{dir}/nope"], "export not found"),
        (["run", "{dir}", "--input", "tokens"], "must be NAME=FILE.npy"),
        (["run", "{dir}", "--providers", "tensorrt"], "is not available"),
        (["generate", "{dir}", "--vocab", "{dir}/missing.json"], "cannot read --vocab"),
    ],
    ids=["missing-export", "bad-input-flag", "provider", "missing-vocab"],
)
def test_errors_are_one_line_with_exit_code_2(lm_dir, args, message, capsys):
    assert main([a.format(dir=lm_dir) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
