"""favor.runtime: run exported models on ONNX Runtime. Imports only numpy and onnxruntime.

>>> from favor.runtime import Session, Generator
>>> session = Session("dist/")              # the export directory, its .onnx, or its manifest
>>> outputs = session.run(tokens=ids, **session.initial_state(batch=1))
>>> new_ids = Generator(session).generate(prompt_ids, max_new_tokens=50)
>>> session.text.decode(new_ids)          # where the export carries its vocabulary
"""

from .contract import Manifest, ManifestError, ModelKind, Sampler, StateEntry, TensorEntry
from .generate import Generator
from .manifest import load_manifest
from .session import Session
from .text import TEXT_KINDS, Text, TextStream

__all__ = [
    "TEXT_KINDS",
    "Generator",
    "Manifest",
    "ManifestError",
    "ModelKind",
    "Sampler",
    "Session",
    "StateEntry",
    "TensorEntry",
    "Text",
    "TextStream",
    "load_manifest",
]
