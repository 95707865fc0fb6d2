"""``--format pt2``: a ``torch.export`` program, the successor of TorchScript for PyTorch's own
runtimes (ExecuTorch among them).

``NAME.pt2`` holds the module the ONNX graph is exported from, called as the graph is: it takes
the manifest's inputs in the manifest's order and returns a tuple of its outputs in the
manifest's order, a causal LM's state included. Every symbolic dim of the spec (``batch``,
``seq``, ...) is a named dynamic dim from 1 up (``seq`` up to the model's longest sequence), so
one program serves prefill and decode at every length. ``torch.export.load(path).module()``
runs it in a process where ``favor`` is not installed: the archive holds aten ops and tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import ExportError, exception_chain, one_line
from ..files import writing
from ..model_specs import FlatOutputs
from ..specs import ModelSpec
from ..validation import Runner
from ..validation.runners import Run, loaded_or_raising, to_numpy
from .base import Built, ExportJob, Format, register_format

if TYPE_CHECKING:
    from favor.runtime.contract import Manifest

    from ..options import ExportOptions

# torch.export's messages list every guard it could not prove: the first ones say enough.
_MAX_MESSAGE = 400


def dynamic_shapes(spec: ModelSpec, example: tuple[Tensor, ...]) -> torch.export.ShapesCollection:
    """One named ``torch.export.Dim`` per spec symbol, from 1 up (the sequence dim up to
    ``spec.max_length``), on every axis of ``example`` (the spec's inputs) that carries it."""
    dims = {
        symbol: torch.export.Dim(
            symbol, min=1, max=spec.max_length if symbol == spec.sequence_dim else None
        )
        for symbol in spec.symbols
    }
    shapes = torch.export.ShapesCollection()
    for tensor_spec, tensor in zip(spec.inputs, example, strict=True):
        axes = {i: dims[d] for i, d in enumerate(tensor_spec.dims) if isinstance(d, str)}
        if axes:
            shapes[tensor] = axes
    return shapes


def export_program(module: nn.Module, spec: ModelSpec) -> torch.export.ExportedProgram:
    """``module`` (called with the spec's inputs) exported at the spec's example, its outputs
    flattened to a tuple in the spec's order; an ExportError if torch.export refuses it, e.g.
    because the model's shapes specialize a dynamic dim."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ExportError(
            "--format pt2 needs a PyTorch module: torch.export cannot read a TorchScript "
            "archive; export the model's checkpoint instead"
        )
    example = spec.example()
    flat = FlatOutputs(module).eval()
    try:
        with torch.no_grad():
            return torch.export.export(flat, example, dynamic_shapes=dynamic_shapes(spec, example))
    except Exception as error:  # torch.export raises many types; all mean "cannot export"
        cause = one_line(exception_chain(error)[-1])
        if len(cause) > _MAX_MESSAGE:
            cause = cause[:_MAX_MESSAGE] + " ..."
        raise ExportError(f"the model cannot be exported with torch.export: {cause}") from error


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Write ``program`` to ``path`` with ``torch.export.save``."""
    # Through a Python file object, as TorchScript archives are: a failed write raises OSError.
    with open(path, "wb") as out:
        torch.export.save(program, out)


@register_format
class Pt2Format(Format):
    """``NAME.pt2``: the torch.export program (module docstring)."""

    name = "pt2"

    @classmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        return cls()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        return cls() if "pt2" in manifest.files else None

    def file_names(self, name: str) -> dict[str, str]:
        return {"pt2": f"{name}.pt2"}

    def build(self, job: ExportJob) -> Built:
        job.say("export", "torch.export program, dynamic " + ", ".join(job.spec.symbols))
        program = export_program(job.module, job.spec)
        path = job.stage / self.file_names(job.name)["pt2"]
        with writing(job.out / path.name):
            save_program(program, path)
        files = {"pt2": path}
        return Built(files, self.runners(files, job.spec))

    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        path = files["pt2"]
        return [Runner("pt2", loaded_or_raising(lambda: _pt2_run(path)), decode=True)]


def _pt2_run(path: Path) -> Run:
    module = torch.export.load(path).module()

    def run(x: tuple[Tensor, ...]) -> list:
        with torch.no_grad():
            return [to_numpy(t) for t in module(*x)]

    return run
