"""Small reference checkpoints and exports shared by the exporter tests (built once per run)."""

import pytest
import torch

from favor.exporter import export, save_checkpoint
from favor.ops.models import PerformerEncoder, PerformerLM

VOCAB = 40


@pytest.fixture(scope="session")
def lm_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    lm = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8)
    return save_checkpoint(lm, tmp_path_factory.mktemp("lm") / "lm.pt")


@pytest.fixture(scope="session")
def encoder_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    encoder = PerformerEncoder(VOCAB, 32, 2, 2, num_classes=3, nb_features=16, chunk_size=8)
    return save_checkpoint(encoder, tmp_path_factory.mktemp("encoder") / "encoder.pt")


@pytest.fixture(scope="session")
def lm_export(lm_checkpoint, tmp_path_factory):
    """The LM exported once with the torchscript exporter (fast), validated."""
    return export(lm_checkpoint, tmp_path_factory.mktemp("lm-export"), exporter="torchscript")
