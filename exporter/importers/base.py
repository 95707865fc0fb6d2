"""What an importer is: an object that recognizes foreign modules and rebuilds them from favor.ops.

An importer never imports the foreign package itself: it recognizes modules by their class's
module path, among the modules the user's own loading already ran (``sys.modules``), so
importing runs no code the user did not already run. The model it returns carries over every
weight; :mod:`.fidelity` measures how close it is to the original.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from .fidelity import FidelityReport


class ImportRefusedError(ExportError):
    """A foreign model in a configuration the importer cannot reproduce; the message names the
    option."""


class Importer(ABC):
    """One foreign implementation. Subclasses set :attr:`name` and :attr:`classes` and register
    with :func:`register_importer`."""

    name: ClassVar[str]
    # Importable class paths (``package.module.Class``) this importer converts, as typed by users
    # for the state_dict route.
    classes: ClassVar[tuple[str, ...]]

    @abstractmethod
    def recognizes(self, module: nn.Module) -> bool:
        """Whether ``module`` or one of its submodules is a foreign module this converts."""

    @abstractmethod
    def convert(self, module: nn.Module) -> nn.Module:
        """An equivalent favor model, every weight carried over; ``module`` is left as it was.

        Raises :class:`ImportRefusedError` naming the option it cannot reproduce.
        """

    @abstractmethod
    def calibrate(self, original: nn.Module, imported: nn.Module, calibration: np.ndarray) -> None:
        """Refine ``imported``, in place, on the user's ``calibration`` token ids, where the
        import has settings that data decides; nothing where it has none."""

    @abstractmethod
    def fidelity(
        self, original: nn.Module, imported: nn.Module, calibration: np.ndarray | None
    ) -> FidelityReport:
        """How close ``imported`` is to ``original`` on random inputs, and on the
        ``calibration`` token ids (from :func:`favor.exporter.importers.read_calibration`)."""

    @abstractmethod
    def from_state_dict(
        self, class_path: str, kwargs: Mapping[str, object], state_dict: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        """The favor model for a ``class_path(**kwargs)`` whose weights are ``state_dict``, built
        without the foreign package."""


IMPORTER_REGISTRY: dict[str, Importer] = {}


def register_importer(cls: type[Importer]) -> type[Importer]:
    """Class decorator: make ``cls`` one of the importers export tries."""
    if cls.name in IMPORTER_REGISTRY:
        raise ValueError(f"importer {cls.name!r} is registered twice")
    IMPORTER_REGISTRY[cls.name] = cls()
    return cls


def find_importer(module: nn.Module) -> Importer | None:
    """The registered importer that recognizes ``module``, if any."""
    return next((i for i in IMPORTER_REGISTRY.values() if i.recognizes(module)), None)


def importer_for_class(class_path: str) -> Importer:
    """The importer that converts ``class_path``; an ExportError listing the known ones."""
    for importer in IMPORTER_REGISTRY.values():
        if class_path in importer.classes:
            return importer
    known = ", ".join(c for i in IMPORTER_REGISTRY.values() for c in i.classes)
    raise ExportError(f"no importer converts {class_path}; known classes: {known}")
