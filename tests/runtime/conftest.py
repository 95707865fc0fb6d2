"""Exports the runtime tests load: a tiny causal LM and a tiny encoder (built once per run)."""

import pytest
import torch

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
