"""Output formats, by name: each is one :class:`Format` in :data:`FORMAT_REGISTRY`.

A new format is one module here, with a class decorated with :func:`register_format`, and its
import below (the import order is the order files are built and listed).
"""

from . import onnx, ort, pt2, static, torchscript  # noqa: F401  registers the formats
from .base import FORMAT_REGISTRY, Built, ExportJob, Format, get_format, register_format

__all__ = [
    "FORMAT_REGISTRY",
    "Built",
    "ExportJob",
    "Format",
    "get_format",
    "register_format",
]
