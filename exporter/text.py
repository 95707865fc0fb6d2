"""The text handling an export carries: ``--text FILE``, or a vocabulary file beside the model.

The file is copied into the export as ``NAME.vocab.json`` or ``NAME.tokenizer.json``, hashed
like the graph, and named in the manifest (``"text": {"kind": ...}``), so an app turns text into
token ids with the export alone (``favor.runtime.Session(...).text``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from favor.runtime.contract import VOCABULARY_KINDS
from favor.runtime.text import TEXT_KINDS, Text, text_kind

from .errors import ExportError
from .specs import ModelSpec

# Looked for beside a model file when --text is not given, in this order: a tokenizer first,
# since a Hugging Face model directory holds both and its vocab.json is not a character list.
SIDECARS = ("{stem}.tokenizer.json", "{stem}.vocab.json", "tokenizer.json", "vocab.json")


@dataclass(frozen=True)
class TextFile:
    """A text file to export: its ``kind`` (:data:`favor.runtime.text.TEXT_KINDS`), where it is,
    and whether it was found beside the model rather than given."""

    kind: str
    path: Path
    found: bool = False

    def file_name(self, name: str) -> str:
        return name + TEXT_KINDS[self.kind].file_suffix


def find_text(text: str | Path | bool | None, model_path: Path | None) -> list[TextFile]:
    """The text files an export may carry, to be tried in order (:func:`check_text`).

    ``text`` is a path (the one candidate), False for none, or None for the files of
    :data:`SIDECARS` beside ``model_path`` whose content is a vocabulary. A given file
    (:class:`~.options.ExportOptions` checked it exists) that is no vocabulary is an ExportError.
    """
    if text is False:
        return []
    if text is None or text is True:
        if model_path is None:
            return []
        found = []
        for pattern in SIDECARS:
            candidate = model_path.parent / pattern.format(stem=model_path.stem)
            try:
                found.append(TextFile(text_kind(candidate), candidate, found=True))
            except ValueError:  # absent, or another tool's file
                continue
        return found
    path = Path(text)
    try:
        return [TextFile(text_kind(path), path)]
    except ValueError as error:
        raise ExportError(f"--text {error}") from None


def check_text(text: TextFile, spec: ModelSpec) -> Text:
    """``text`` read and checked against the model's token ids input.

    ExportError when the model takes no token ids or the vocabulary's size does not fit.
    """
    what = f"{text.path.name} (beside the model)" if text.found else f"--text {text.path}"
    tokens = [t for t in spec.inputs if t.integer_data and t.high is not None]
    if spec.kind not in VOCABULARY_KINDS or len(tokens) != 1:
        raise ExportError(
            f"{what}: a {spec.kind} model that takes no token ids has no use for text"
        )
    try:
        read = TEXT_KINDS[text.kind].read(text.path)
    except ValueError as error:
        raise ExportError(f"{what}: {error}") from None
    vocabulary = tokens[0].high
    if not read.fits(vocabulary):
        raise ExportError(
            f"{what} holds {read.size} tokens, and the model's vocabulary has {vocabulary}"
        )
    return read
