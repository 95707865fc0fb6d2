"""favor.runtime.text: character vocabularies and tokenizer.json files, the manifest's record of
them, and the streaming of generated ids as text."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from tokenizers import Tokenizer as HFTokenizer

from favor.runtime import Generator, ManifestError, Session, TextStream
from favor.runtime.cli import main as favor_run
from favor.runtime.text import Characters, Tokenizer, read_text, text_kind
from tests.conftest import SAMPLE_LM
from tests.runtime.conftest import CORPUS, train_tokenizer

SAMPLE_VOCAB = SAMPLE_LM.with_name("vocab.json")
# Characters a byte-level BPE splits over several ids, and spaces a metaspace one marks.
AWKWARD = "The sand é, 😀 and  two spaces"


@pytest.fixture(scope="module")
def sample_characters() -> list[str]:
    return json.loads(SAMPLE_VOCAB.read_text())


@pytest.fixture(scope="module", params=["bytes", "metaspace"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    train_tokenizer(request.param, 200 if request.param == "metaspace" else 290).save(str(path))
    return Tokenizer.read(path)


def test_characters_encode_to_their_index_in_the_vocabulary(sample_characters):
    text = CORPUS.read_text()[:2000]
    characters = Characters.read(SAMPLE_VOCAB)
    ids = characters.encode(text)
    assert ids == [sample_characters.index(c) for c in text]
    assert characters.decode(ids) == text
    assert characters.size == len(sample_characters) == 59


def test_characters_name_what_they_cannot_encode():
    with pytest.raises(ValueError, match=r"outside the vocabulary: '\$é'"):
        Characters.read(SAMPLE_VOCAB).encode("The é$é")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "non-empty list of single characters"),
        (["a", "bc"], "non-empty list of single characters"),
        (["a", 1], "non-empty list of single characters"),
        ({"a": 0}, "non-empty list of single characters"),
        (["a", "b", "a"], "lists 'a' more than once"),
    ],
    ids=["empty", "multi-character", "not-a-string", "an-object", "repeated"],
)
def test_a_bad_character_vocabulary_is_refused(content, message):
    with pytest.raises(ValueError, match=message):
        Characters(content)


def test_a_tokenizer_encodes_as_the_tokenizers_package_does(tokenizer_file):
    reference = HFTokenizer.from_file(str(tokenizer_file))
    ours = Tokenizer.read(tokenizer_file)
    for text in (AWKWARD, CORPUS.read_text()[:500]):
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids
        assert ours.decode(ours.encode(text)) == text
    assert ours.size == reference.get_vocab_size() == 290


@pytest.mark.parametrize("prompt", ["The ", "x"], ids=["prompt", "one-character"])
def test_a_stream_of_ids_decodes_to_the_whole_texts_difference(tokenizer, prompt):
    whole = tokenizer.encode(prompt + AWKWARD)
    cut = len(tokenizer.encode(prompt))
    stream = TextStream(tokenizer, whole[:cut])
    pieces = [stream.push(token) for token in whole[cut:]]
    pieces.append(stream.flush())
    expected = tokenizer.decode(whole)[len(tokenizer.decode(whole[:cut])) :]
    assert "".join(pieces) == expected
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 3  # it streams, not all at the end


def test_a_stream_waits_for_a_character_split_over_several_ids(tokenizer_file):
    tokenizer = Tokenizer.read(tokenizer_file)
    ids = tokenizer.encode("😀")
    assert len(ids) > 1  # the byte-level BPE has no merge for it
    stream = TextStream(tokenizer)
    assert [stream.push(token) for token in ids] == [""] * (len(ids) - 1) + ["😀"]


def test_a_stream_of_characters_gives_one_character_per_id():
    characters = Characters.read(SAMPLE_VOCAB)
    stream = TextStream(characters, characters.encode("The "))
    assert [stream.push(i) for i in characters.encode("sand")] == list("sand")


@pytest.mark.parametrize(
    ("content", "kind"),
    [('["a", "b"]', "characters"), ('{"model": {"type": "BPE"}}', "tokenizer.json")],
    ids=["list", "tokenizer"],
)
def test_the_kind_of_a_text_file_follows_from_its_content(tmp_path, content, kind):
    (tmp_path / "f.json").write_text(content)
    assert text_kind(tmp_path / "f.json") == kind


@pytest.mark.parametrize(
    "content", ['{"a": 1}', "5", "not json"], ids=["gpt2-vocab", "number", "not-json"]
)
def test_a_file_that_is_no_vocabulary_has_no_kind(tmp_path, content):
    (tmp_path / "f.json").write_text(content)
    with pytest.raises(ValueError, match=r"f\.json"):
        text_kind(tmp_path / "f.json")


def test_an_unknown_text_kind_is_a_manifest_error():
    with pytest.raises(ManifestError, match=r"text kind .sentencepiece. is unknown.*characters"):
        read_text("sentencepiece", SAMPLE_VOCAB)


def test_a_tokenizer_without_the_tokenizers_package_names_the_extra(tokenizer_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ManifestError, match=r"pip install 'favor-runtime\[text\]'"):
        read_text("tokenizer.json", tokenizer_file)


def test_the_sample_export_carries_its_vocabulary(char_lm_dir, sample_characters):
    session = Session(char_lm_dir)
    assert session.manifest.text == {"kind": "characters"}
    carried = char_lm_dir / session.manifest.files["text"].path
    assert carried.read_bytes() == SAMPLE_VOCAB.read_bytes()
    ids = Generator(session).generate(session.text.encode("The "), 30)
    assert session.text.decode(ids) == "".join(sample_characters[i] for i in ids)


def test_a_tokenizer_export_encodes_and_decodes_with_its_tokenizer(bpe_lm_dir, tokenizer_file):
    session = Session(bpe_lm_dir)
    assert session.manifest.text == {"kind": "tokenizer.json"}
    reference = HFTokenizer.from_file(str(tokenizer_file))
    prompt = reference.encode("The sand", add_special_tokens=False).ids
    assert session.text.encode("The sand") == prompt
    ids = Generator(session).generate(prompt, 20)
    assert session.text.decode(ids) == reference.decode(ids)


def test_a_changed_vocabulary_is_refused(char_lm_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(char_lm_dir, copy)
    vocab = copy / "char_lm.vocab.json"
    vocab.write_text(vocab.read_text().replace('"a"', '"@"'))
    with pytest.raises(ManifestError, match=r"char_lm\.vocab\.json does not match the sha256"):
        Session(copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["files"].pop("text"), "it has text but no files.text"),
        (lambda m: m.update(text={"kind": 5}), r"text must be null or an object"),
        (lambda m: m.update(text={"kind": "characters", "x": 1}), r"text must be null"),
    ],
    ids=["no-file", "kind-not-a-string", "extra-key"],
)
def test_a_malformed_text_entry_is_a_manifest_error(char_lm_dir, tmp_path, change, message):
    copy = tmp_path / "export"
    shutil.copytree(char_lm_dir, copy)
    path = copy / "char_lm.manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
        Session(copy)


@pytest.mark.parametrize("export", ["char_lm_dir", "bpe_lm_dir"], ids=["characters", "tokenizer"])
def test_favor_run_generates_text_with_the_carried_vocabulary(request, export, capsys):
    directory = request.getfixturevalue(export)
    args = ["generate", str(directory), "--prompt", "The ", "-n", "25", "--json"]
    assert favor_run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    session = Session(directory)
    ids = Generator(session).generate(session.text.encode("The "), 25)
    assert printed["text"] == session.text.decode(session.text.encode("The ") + ids)
    assert printed["new_tokens"] == 25


def test_favor_run_without_a_vocabulary_says_how_to_give_one(lm_dir, capsys):
    assert favor_run(["generate", str(lm_dir), "--prompt", "ab"]) == 2
    error = capsys.readouterr().err.strip()
    assert "lm.manifest.json carries no vocabulary: give --vocab FILE" in error
    assert "\n" not in error
