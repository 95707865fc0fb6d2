"""favor.exporter: torch to ONNX and TorchScript, with a manifest and hard validation.

>>> from favor.exporter import export, save_checkpoint
>>> save_checkpoint(model, "model.pt")
>>> result = export("model.pt", "out/", opset=17)
"""

from .api import ExportResult, assert_parity, export, validate_export
from .checkpoint import load_model, save_checkpoint
from .errors import ExportError, ValidationError
from .validation import ValidationReport

__all__ = [
    "ExportError",
    "ExportResult",
    "ValidationError",
    "ValidationReport",
    "assert_parity",
    "export",
    "load_model",
    "save_checkpoint",
    "validate_export",
]
