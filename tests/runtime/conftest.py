"""Exports the runtime tests load: a tiny causal LM, a tiny encoder and a plain module (built
once per run), and a copy of the LM export whose manifest lists its tensors in another order."""

import json
import shutil

import pytest
import torch
from torch import nn

from favor.exporter import export
from favor.ops.models import PerformerEncoder, PerformerLM

VOCAB = 30


@pytest.fixture(scope="session")
def tiny_lm():
    torch.manual_seed(0)
    return PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8).eval()


@pytest.fixture(scope="session")
def lm_dir(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime-lm")
    export(tiny_lm, out, name="lm", exporter="torchscript", formats="onnx")
    return out


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(1)
    encoder = PerformerEncoder(VOCAB, 32, 1, 2, num_classes=3, nb_features=16, chunk_size=8).eval()
    out = tmp_path_factory.mktemp("runtime-encoder")
    export(encoder, out, name="encoder", exporter="torchscript", formats="onnx")
    return out


@pytest.fixture(scope="session")
def module_dir(tmp_path_factory):
    """A module export with both formats, so its manifest says how to call the archive."""
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("runtime-module")
    export(
        nn.Linear(4, 3), out, name="module", exporter="torchscript", inputs=["x:batch,4:float32"]
    )
    return out


@pytest.fixture
def permuted_lm_dir(lm_dir, tmp_path):
    """The LM export with its manifest's inputs, outputs and state listed in reverse.

    The graph keeps its own order, so anything that binds by position binds the wrong tensors.
    The manifest is not among the hashed files: nothing else needs changing.
    """
    target = tmp_path / "permuted"
    shutil.copytree(lm_dir, target)
    path = target / "lm.manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("inputs", "outputs", "state"):
        manifest[key].reverse()
    path.write_text(json.dumps(manifest))
    return target
