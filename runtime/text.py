"""Text to token ids and back, for exports that carry their vocabulary.

An export may hold its text handling as one file, listed in the manifest as ``files.text``, with
``"text": {"kind": KIND}`` saying how to read it. Each kind is one class in
:data:`TEXT_KINDS`:

- ``characters``: a JSON list of single characters, token id = index (the sample LM's);
- ``tokenizer.json``: a Hugging Face ``tokenizers`` file, read with the ``tokenizers`` package
  (torch-free; ``pip install 'favor-runtime[text]'``).

``Session(...).text`` gives the export's :class:`Text`; :class:`TextStream` turns the ids a
Generator yields into printable pieces as they come.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from .contract import ManifestError

TEXT_KINDS: dict[str, type[Text]] = {}


def register_text(cls: type[Text]) -> type[Text]:
    """Class decorator: make ``cls`` the reader of manifests whose text kind is ``cls.kind``."""
    TEXT_KINDS[cls.kind] = cls
    return cls


class Text(ABC):
    """An export's text handling: ``encode`` a string to token ids, ``decode`` ids to a string.

    Subclasses set :attr:`kind` (the manifest's ``text.kind``) and :attr:`file_suffix` (the
    file name favor-export writes, after the export's name).
    """

    kind: ClassVar[str]
    file_suffix: ClassVar[str]

    @classmethod
    @abstractmethod
    def read(cls, path: Path) -> Text:
        """The text handling in the file at ``path``; ValueError naming what is wrong with it."""

    @property
    @abstractmethod
    def size(self) -> int:
        """How many token ids the vocabulary holds: ids are ``[0, size)``."""

    def fits(self, vocabulary: int) -> bool:
        """Whether this text handling serves a model whose token ids are ``[0, vocabulary)``.

        Tokenizers' vocabularies are often padded up to a round embedding size, so theirs only
        has to fit; :class:`Characters` is exactly the embedding's rows.
        """
        return self.size <= vocabulary

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; ValueError naming what the vocabulary cannot represent."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""


@register_text
class Characters(Text):
    """A character vocabulary: a JSON list of single characters, token id = index."""

    kind = "characters"
    file_suffix = ".vocab.json"

    def __init__(self, characters: Sequence[str]) -> None:
        if (
            not isinstance(characters, (list, tuple))
            or not characters
            or not all(isinstance(c, str) and len(c) == 1 for c in characters)
        ):
            raise ValueError("a character vocabulary must be a non-empty list of single characters")
        repeated = sorted({c for c in characters if characters.count(c) > 1})
        if repeated:
            raise ValueError(f"a character vocabulary lists {''.join(repeated)!r} more than once")
        self.characters = tuple(characters)
        self._index = {c: i for i, c in enumerate(characters)}

    @classmethod
    def read(cls, path: Path) -> Characters:
        try:
            return cls(json.loads(Path(path).read_bytes()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{Path(path).name}: {error}") from None

    @property
    def size(self) -> int:
        return len(self.characters)

    def fits(self, vocabulary: int) -> bool:
        return self.size == vocabulary

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self._index})
        if unknown:
            raise ValueError(
                f"the text has characters outside the vocabulary: {''.join(unknown)!r}"
            )
        return [self._index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.characters[i] for i in ids)


@register_text
class Tokenizer(Text):
    """A Hugging Face ``tokenizer.json``, read with the ``tokenizers`` package.

    ``encode`` adds no special tokens: a prompt continues as typed.
    """

    kind = "tokenizer.json"
    file_suffix = ".tokenizer.json"

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def read(cls, path: Path) -> Tokenizer:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise ValueError(
                f"{Path(path).name} is a tokenizer.json, which needs the tokenizers package: "
                "pip install 'favor-runtime[text]'"
            ) from None
        try:
            return cls(HFTokenizer.from_str(Path(path).read_text(encoding="utf-8")))
        except Exception as error:  # tokenizers raises plain Exception for a bad file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"{Path(path).name} is not a readable tokenizer.json: {first}"
            ) from None

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def text_kind(path: Path) -> str:
    """Which of :data:`TEXT_KINDS` the file at ``path`` is, from its content.

    ValueError when it is neither: a JSON list is a character vocabulary, an object with a
    ``model`` entry a ``tokenizer.json``.
    """
    try:
        content = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {Path(path).name}: {error}") from None
    if isinstance(content, list):
        return Characters.kind
    if isinstance(content, dict) and "model" in content:
        return Tokenizer.kind
    raise ValueError(
        f"{Path(path).name} is neither a character vocabulary (a JSON list of characters) nor "
        "a tokenizer.json (a JSON object with a 'model' entry)"
    )


def read_text(kind: str, path: Path) -> Text:
    """The :class:`Text` of ``kind`` in the file at ``path``; ManifestError naming the problem."""
    if kind not in TEXT_KINDS:
        raise ManifestError(
            f"text kind {kind!r} is unknown to this favor-runtime; it reads {', '.join(TEXT_KINDS)}"
        )
    try:
        return TEXT_KINDS[kind].read(path)
    except ValueError as error:
        raise ManifestError(str(error)) from None


class TextStream:
    """The text of a growing list of token ids, piece by piece, as a Generator yields them.

    Decoding one id at a time is wrong for tokenizers whose pieces depend on their neighbours
    (a byte-level BPE splits one character over several ids; a leading space is dropped at the
    start of a text), so each new piece is the difference between decoding a few ids before
    it with and without it. A piece that ends in an incomplete character waits for the next id.
    """

    # Ids of context kept before the new ones: enough for a piece to depend on its neighbours.
    CONTEXT = 4

    def __init__(self, text: Text, prompt_ids: Sequence[int] = ()) -> None:
        self.text = text
        self._ids = [int(i) for i in prompt_ids]
        self._start = max(0, len(self._ids) - self.CONTEXT)  # first id of the context
        self._done = len(self._ids)  # ids already turned into text

    def push(self, token: int) -> str:
        """Add ``token``; return the text it completes (possibly empty)."""
        self._ids.append(int(token))
        before = self.text.decode(self._ids[self._start : self._done])
        after = self.text.decode(self._ids[self._start :])
        if after.endswith("\ufffd") or not after.startswith(before):
            return ""
        self._done = len(self._ids)
        self._start = max(0, self._done - self.CONTEXT)
        return after[len(before) :]

    def flush(self) -> str:
        """The text of ids still waiting for a character to complete, as it decodes now."""
        before = self.text.decode(self._ids[self._start : self._done])
        after = self.text.decode(self._ids[self._start :])
        self._done = len(self._ids)
        self._start = max(0, self._done - self.CONTEXT)
        return after[len(before) :] if after.startswith(before) else ""
