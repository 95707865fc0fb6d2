"""What an output format is: an object that builds its files and runs them for validation.

A format is registered by name (``--format NAME``). Export builds each chosen format into the
staging directory (:meth:`Format.build`); validation runs what it built through the runners it
hands back; the manifest records the files and the format's own entries. ``favor-validate``
rebuilds the formats of an existing export from its manifest (:meth:`Format.from_manifest`)
and asks them for runners of the files on disk (:meth:`Format.runners`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
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
    """Class decorator: make ``cls`` available as ``--format cls.name``."""
    if cls.name in FORMAT_REGISTRY:
        raise ValueError(f"format {cls.name!r} is registered twice")
    FORMAT_REGISTRY[cls.name] = cls
    return cls


def get_format(name: str) -> type[Format]:
    """The registered format ``name``; an unknown name is an ExportError listing the known ones."""
    if name not in FORMAT_REGISTRY:
        raise ExportError(f"unknown format {name!r}; one of {', '.join(FORMAT_REGISTRY)}")
    return FORMAT_REGISTRY[name]
