"""Fixtures shared across test folders: the shipped sample LM's export, built once per run."""

from pathlib import Path

import pytest

from favor.exporter import export

SAMPLE_LM = Path(__file__).resolve().parents[1] / "samples" / "char_lm" / "char_lm.pt"


@pytest.fixture(scope="session")
def char_lm_dir(tmp_path_factory):
    """The shipped sample LM as the README's main command exports it, with the vocabulary
    beside it (ONNX only, to save time), plus its ``--static`` pair (the runtimes benchmark
    times both)."""
    out = tmp_path_factory.mktemp("char-lm")
    export(SAMPLE_LM, out, formats="onnx", static=True)
    return out
