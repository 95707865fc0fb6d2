"""favor-runtime is its own distribution: installed alone from runtime/, it brings no torch, onnx
or click, and streams the same text from an export as the full install does."""

from __future__ import annotations

import json
import string
import subprocess
import venv
from pathlib import Path

import pytest

from favor.runtime import Generator, Session
from tests.runtime.conftest import VOCAB

ROOT = Path(__file__).resolve().parents[2]
CHARACTERS = list(string.ascii_lowercase + " .,!?")[:VOCAB]


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def runtime_only(tmp_path_factory) -> Path:
    """A fresh virtual environment with favor-runtime installed from runtime/ and nothing else."""
    env = tmp_path_factory.mktemp("runtime-only") / "venv"
    venv.create(env, with_pip=True)
    pip = env / "bin" / "pip"
    done = _run(pip, "install", "-q", "-c", ROOT / "constraints.txt", ROOT / "runtime")
    assert done.returncode == 0, done.stderr
    return env


def test_the_runtime_installs_without_torch_onnx_or_click(runtime_only):
    listed = _run(runtime_only / "bin" / "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"favor-runtime", "numpy", "onnxruntime"} <= names
    assert not names & {"torch", "onnx", "onnxscript", "click", "scipy", "favor-export"}


def test_favor_run_streams_what_the_full_install_streams(runtime_only, lm_dir, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(CHARACTERS))
    done = _run(
        runtime_only / "bin" / "favor-run", "generate", lm_dir, "--vocab", vocab,
        "--prompt", "abc", "-n", "20", "--temperature", "0", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = json.loads(done.stdout)["text"]
    prompt = [CHARACTERS.index(c) for c in "abc"]
    expected = Generator(Session(lm_dir)).generate(prompt, 20)
    assert text == "abc" + "".join(CHARACTERS[i] for i in expected)


def test_the_runtime_alone_cannot_reach_torch(runtime_only):
    probe = "import favor.runtime, importlib.util as u; print(u.find_spec('torch') is None)"
    done = _run(runtime_only / "bin" / "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_the_runtime_alone_streams_text_from_an_export_that_carries_its_vocabulary(
    runtime_only, char_lm_dir
):
    done = _run(
        runtime_only / "bin" / "favor-run", "generate", char_lm_dir, "--prompt", "The ", "-n",
        "30", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    characters = json.loads((ROOT / "samples" / "char_lm" / "vocab.json").read_text())
    prompt = [characters.index(c) for c in "The "]
    expected = Generator(Session(char_lm_dir)).generate(prompt, 30)
    assert json.loads(done.stdout)["text"] == "The " + "".join(characters[i] for i in expected)


def test_a_tokenizer_export_without_the_text_extra_names_the_extra(runtime_only, bpe_lm_dir):
    done = _run(runtime_only / "bin" / "favor-run", "generate", bpe_lm_dir, "--prompt", "The ")
    assert done.returncode == 2
    assert "pip install 'favor-runtime[text]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
