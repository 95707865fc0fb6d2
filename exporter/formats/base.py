"""What an output format is: an object that builds its files and runs them for validation.

A format is registered by name (``--format NAME``). Export builds each chosen format into the
staging directory (:meth:`Format.build`); validation runs what it built through the runners it
hands back; the manifest records the files and the format's own entries. ``favor-validate``
rebuilds the formats of an existing export from its manifest (:meth:`Format.from_manifest`)
and asks them for runners of the files on disk (:meth:`Format.runners`).

A format may be built from another's files (``--format ort`` converts the ONNX graph): it names
those formats in :attr:`Format.requires`. Formats are built in the registry's order into one
staging directory, so a required format, registered first, has written its files into
``job.stage`` under its :meth:`Format.file_names` by the time the requiring one is built.
Choosing a format without what it requires is an ExportError (:func:`check_requires`), not a
silent addition: an export writes the formats asked for and no others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from ..errors import ExportError
from ..specs import ModelSpec
from ..validation import Runner

if TYPE_CHECKING:
    from favor.runtime.contract import Manifest

    from ..options import ExportOptions

Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class ExportJob:
    """What every format builds from.

    ``module`` is the module to trace, already cast to the export's dtype; its call takes the
    spec's inputs in order and returns its outputs in order. ``output_dims`` are the output
    dims (``describe_outputs``). Files are written into ``stage`` under names from
    :meth:`Format.file_names` and published into ``out`` only when the whole export succeeds.
    """

    module: nn.Module
    spec: ModelSpec
    output_dims: Mapping[str, tuple[int | str, ...]]
    name: str
    stage: Path
    out: Path
    say: Progress


@dataclass
class Built:
    """What one format wrote: ``files`` (role -> staged path) are published; ``runners`` are
    validated; ``manifest`` holds the format's top-level manifest entries."""

    files: dict[str, Path]
    runners: list[Runner]
    manifest: dict = field(default_factory=dict)


class Format(ABC):
    """One output format. Subclasses set :attr:`name` and register with :func:`register_format`."""

    name: ClassVar[str]
    # The formats whose staged files this one is built from (see the module docstring), each
    # with what it is needed for, as ``check_requires`` words the error.
    requires: ClassVar[Mapping[str, str]] = {}

    @classmethod
    @abstractmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        """The format as ``options`` configure it; ``exporter`` is the ONNX exporter in use."""

    @classmethod
    @abstractmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        """The format an existing export was written with, or None if it has none of its files."""

    @abstractmethod
    def file_names(self, name: str) -> dict[str, str]:
        """``{role: file name}`` of every file an export named ``name`` may publish."""

    @abstractmethod
    def build(self, job: ExportJob) -> Built:
        """Write the format's files for ``job`` into ``job.stage``."""

    @abstractmethod
    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        """Runners for this format's files in ``files`` (role -> path), called as ``spec`` says."""


FORMAT_REGISTRY: dict[str, type[Format]] = {}


def register_format(cls: type[Format]) -> type[Format]:
    """Class decorator: make ``cls`` available as ``--format cls.name``.

    The formats ``cls`` requires must be registered already: registration order is build order.
    """
    if cls.name in FORMAT_REGISTRY:
        raise ValueError(f"format {cls.name!r} is registered twice")
    unregistered = [r for r in cls.requires if r not in FORMAT_REGISTRY]
    if unregistered:
        raise ValueError(
            f"format {cls.name!r} requires {', '.join(unregistered)}, which must be registered first"
        )
    FORMAT_REGISTRY[cls.name] = cls
    return cls


def check_requires(formats: Sequence[str]) -> None:
    """ExportError naming the first of ``formats`` (registered names) chosen without a format it
    requires, e.g. ``--format ort converts the ONNX graph, and --format has no onnx``."""
    for name in formats:
        for required, why in FORMAT_REGISTRY[name].requires.items():
            if required not in formats:
                raise ExportError(f"--format {name} {why}, and --format has no {required}")


def get_format(name: str) -> type[Format]:
    """The registered format ``name``; an unknown name is an ExportError listing the known ones."""
    if name not in FORMAT_REGISTRY:
        raise ExportError(f"unknown format {name!r}; one of {', '.join(FORMAT_REGISTRY)}")
    return FORMAT_REGISTRY[name]
