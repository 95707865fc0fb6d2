"""Exports the runtime tests load: a tiny causal LM, a tiny encoder and a plain module (built
once per run), a tiny LM with a tokenizer, and a copy of the LM export whose manifest lists its
tensors in another order. The sample LM's export is tests/conftest.py's."""

import json
import shutil

import pytest
import torch
from torch import nn

from favor.exporter import export
from favor.ops.models import PerformerEncoder, PerformerLM
from tests.conftest import SAMPLE_LM

VOCAB = 30
CORPUS = SAMPLE_LM.with_name("corpus.txt")
# A byte-level BPE (one character may take several ids) that fits BPE_LM's embedding.
BPE_VOCAB, BPE_LM_VOCAB = 290, 300


def train_tokenizer(kind: str, vocab_size: int):
    """A Hugging Face tokenizer trained on the sample corpus: ``bytes`` (byte-level BPE, as
    GPT-2's) or ``metaspace`` (BPE over words marked with a leading ▁, as SentencePiece's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bytes":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet, special = pre_tokenizers.ByteLevel.alphabet(), []
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        alphabet, special = [], ["<unk>"]
    # The alphabet is limited so that small vocabularies stay at the size asked for.
    limit = {"limit_alphabet": vocab_size // 2} if not alphabet else {}
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=special,
        show_progress=False, **limit,
    )  # fmt: skip
    tokenizer.train_from_iterator([CORPUS.read_text()], trainer)
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A byte-level BPE ``tokenizer.json`` of :data:`BPE_VOCAB` tokens."""
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer("bytes", BPE_VOCAB).save(str(path))
    return path


@pytest.fixture(scope="session")
def bpe_lm_dir(tokenizer_file, tmp_path_factory):
    """A tiny causal LM over :data:`BPE_LM_VOCAB` ids, exported with ``tokenizer_file``."""
    torch.manual_seed(3)
    lm = PerformerLM(BPE_LM_VOCAB, 32, 1, 2, nb_features=16, chunk_size=8).eval()
    out = tmp_path_factory.mktemp("runtime-bpe-lm")
    export(lm, out, name="bpe", formats="onnx", exporter="torchscript", text=tokenizer_file)
    return out


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
