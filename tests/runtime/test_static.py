"""The Generator on a ``--static`` export: the fixed-shape pair gives the dynamic graph's ids."""

from __future__ import annotations

import pytest
import torch

from favor.exporter import export
from favor.ops.models import PerformerLM
from favor.runtime import Session
from favor.runtime.contract import ManifestError
from favor.runtime.generate import Generator
from favor.runtime.static import StaticLM

CHUNK = 8


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
    torch.manual_seed(0)
    lm = PerformerLM(31, 32, 2, 2, nb_features=16, chunk_size=8).eval()
    out = tmp_path_factory.mktemp("static_lm")
    export(
        lm, out, name="lm", formats="onnx", exporter="torchscript", static=True,
        prefill_chunk=CHUNK, validate_outputs=False,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "length", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3], ids=lambda n: f"prompt{n}"
)
def test_static_pair_gives_the_dynamic_graphs_greedy_ids(static_dir, length):
    session = Session(static_dir, providers="cpu")
    prompt = [(7 * i + 3) % 31 for i in range(length)]
    dynamic = Generator(session, static=False).generate(prompt, 12)
    static = Generator(session, static=True).generate(prompt, 12)
    assert static == dynamic
    assert len(static) == 12


@pytest.mark.parametrize("threads", [1, 2], ids=lambda n: f"threads{n}")
def test_the_pair_runs_with_the_sessions_threads(static_dir, threads):
    session = Session(static_dir, providers="cpu", threads=threads)
    pair = Generator(session, static=True)._drive.__self__
    for graph in pair.sessions.values():
        assert graph.get_session_options().intra_op_num_threads == threads


def test_the_generator_uses_the_pair_only_when_asked(static_dir, tmp_path):
    session = Session(static_dir, providers="cpu")
    assert isinstance(Generator(session, static=True)._drive.__self__, StaticLM)
    assert not isinstance(Generator(session)._drive.__self__, StaticLM)
    lm = PerformerLM(31, 32, 1, 2, nb_features=16, chunk_size=8).eval()
    export(lm, tmp_path, name="lm", formats="onnx", exporter="torchscript", validate_outputs=False)
    plain = Session(tmp_path, providers="cpu")
    assert not isinstance(Generator(plain)._drive.__self__, StaticLM)
    with pytest.raises(ManifestError, match="has no static decode and prefill graphs"):
        Generator(plain, static=True)
