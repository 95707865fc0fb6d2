"""``--format torchscript``: traced graphs behind a scripted front that takes the model's own call.

A traced graph takes exactly the tensors it was traced with, so each optional argument is
traced both ways, given and omitted, and a small scripted front picks the trace. The ONNX
export's flat wrappers are not what is saved: a single output comes back as a tensor, and a
causal LM's state as one argument. The archive is called:

- causal LM: ``archive(tokens, state=None, return_state=False)``, ``tokens (B, N)`` int64 ->
  ``logits (B, N, V)``; with ``return_state=True``, ``(logits, [offsets, kv_0, ...])``. ``state``
  is a list or tuple ``(offsets (B,) int64, kv_0, ..., kv_{L-1})`` as the model's own, each
  ``kv_i`` float32 ``(B, H, M', Dv + 1)``; omitted, the sequences start empty.
- encoder: ``archive(tokens, key_padding_mask=None)`` -> ``hidden (B, N, dim)`` or
  ``logits (B, num_classes)``, ``key_padding_mask (B, N)`` bool with True at padding.
- any other module: ``archive(*inputs)`` in the ``--input`` order -> its one output tensor, or a
  tuple of its outputs.

:func:`archive_call` writes this into the manifest, :func:`call_archive` calls an archive with
the manifest's inputs. The archive holds only TorchScript code and tensors, so
``torch.jit.load`` reads it in a process where ``favor`` is not installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from favor.runtime.contract import Manifest, ModelKind

from ..errors import ExportError
from ..files import writing
from ..model_specs import flatten_outputs
from ..specs import ModelSpec
from ..validation import Runner
from ..validation.runners import Run, loaded_or_raising, to_numpy
from .base import Built, ExportJob, Format, register_format

if TYPE_CHECKING:
    from ..options import ExportOptions


class _LMSteps(nn.Module):
    """A causal LM whose state is a list: ``(tokens, [state]) -> (logits, [new_state])``."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.model = lm

    def forward(self, tokens: Tensor, state: list[Tensor] | None = None):
        carried = None if state is None else tuple(state)
        logits, new_state = self.model(tokens, carried, return_state=True)
        return logits, list(new_state)


class _CausalLMCall(nn.Module):
    """The scripted front of a causal LM: ``fresh`` traced without state, ``continued`` with."""

    def __init__(self, fresh: nn.Module, continued: nn.Module) -> None:
        super().__init__()
        self.fresh = fresh
        self.continued = continued

    def forward(
        self, tokens: Tensor, state: list[Tensor] | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        if state is None:
            logits, new_state = self.fresh(tokens)
        else:
            logits, new_state = self.continued(tokens, state)
        if return_state:
            return logits, new_state
        return logits


class _EncoderCall(nn.Module):
    """The scripted front of an encoder: ``unmasked`` traced without a mask, ``masked`` with."""

    def __init__(self, unmasked: nn.Module, masked: nn.Module) -> None:
        super().__init__()
        self.unmasked = unmasked
        self.masked = masked

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if key_padding_mask is None:
            return self.unmasked(tokens)
        return self.masked(tokens, key_padding_mask)


class _Outputs(nn.Module):
    """Any module, returning its one output as a tensor and several as a tuple."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.model = module

    def forward(self, *inputs: Tensor):
        outputs = flatten_outputs(self.model(*inputs))
        return outputs[0] if len(outputs) == 1 else outputs


def _trace(module: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    return torch.jit.trace(module, example, check_trace=False)


def _archive(module: nn.Module, spec: ModelSpec) -> torch.jit.ScriptModule:
    """The module to save for ``module``, the module export traces for ``spec``."""
    example = spec.example()
    if spec.kind is ModelKind.CAUSAL_LM:
        steps = _LMSteps(module.model)  # module is the LMStep wrapping the user's model
        fresh, continued = _trace(steps, example[:1]), _trace(steps, (example[0], [*example[1:]]))
        return torch.jit.script(_CausalLMCall(fresh, continued))
    if spec.kind is ModelKind.ENCODER:
        unmasked, masked = _trace(module, example[:1]), _trace(module, example)
        return torch.jit.script(_EncoderCall(unmasked, masked))
    return _trace(_Outputs(module), example)


def build_torchscript(module: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Trace ``module`` at the spec's example inputs and save the archive to ``path``.

    ``module`` and ``spec`` are those the ONNX export uses; the archive is called as the
    model is (see the module docstring), not as ``module``.
    """
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            archive = _archive(module, spec)
            # Saved to a path, a failed write (disk full) aborts the process in C++; to a file
            # object, torch serializes in memory and Python's write raises the OSError.
            with open(path, "wb") as out:
                torch.jit.save(archive, out)
    except OSError:
        raise  # the caller names the file
    except Exception as error:  # tracing raises many types; all mean "cannot trace"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(f"the model cannot be traced to TorchScript: {first}") from error


def call_archive(
    archive: torch.jit.ScriptModule, spec: ModelSpec, inputs: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """Call ``archive`` as documented with ``inputs`` in the spec's input order.

    Returns the outputs in the spec's output order; a causal LM's state is given and returned.
    A causal LM archive from before ``return_state`` takes and returns the graph's flat tensors.
    """
    arguments = {a.name for a in archive.forward.schema.arguments}
    if spec.kind is ModelKind.CAUSAL_LM and "return_state" in arguments:
        logits, state = archive(inputs[0], list(inputs[1:]), True)
        return (logits, *state)
    outputs = archive(*inputs)
    return outputs if isinstance(outputs, tuple) else (outputs,)


def archive_call(spec: ModelSpec) -> dict:
    """The manifest's ``"torchscript"`` entry: how the archive is called.

    ``arguments`` name the manifest inputs each argument carries, in order (a list where there
    are several); ``returns`` names the manifest outputs that come back.
    """
    names = [t.name for t in spec.inputs]
    outputs = list(spec.output_names)
    if spec.kind is ModelKind.CAUSAL_LM:
        state = ", ".join(outputs[1:])
        return {
            "call": "archive(tokens, state=None, return_state=False)",
            "arguments": [
                {"name": "tokens", "inputs": names[:1], "optional": False},
                {"name": "state", "inputs": names[1:], "optional": True},
                {"name": "return_state", "inputs": [], "optional": True},
            ],
            "returns": f"{outputs[0]}; with return_state=True, ({outputs[0]}, [{state}])",
        }
    if spec.kind is ModelKind.ENCODER:
        return {
            "call": "archive(tokens, key_padding_mask=None)",
            "arguments": [
                {"name": "tokens", "inputs": names[:1], "optional": False},
                {"name": "key_padding_mask", "inputs": names[1:], "optional": True},
            ],
            "returns": outputs[0],
        }
    return {
        "call": f"archive({', '.join(names)})",
        "arguments": [{"name": n, "inputs": [n], "optional": False} for n in names],
        "returns": outputs[0] if len(outputs) == 1 else f"({', '.join(outputs)})",
    }


@register_format
class TorchScriptFormat(Format):
    """``NAME.torchscript.pt``: the archive, called as the model is (module docstring)."""

    name = "torchscript"

    @classmethod
    def from_options(cls, options: ExportOptions, exporter: str) -> Format:
        return cls()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Format | None:
        return cls() if "torchscript" in manifest.files else None

    def file_names(self, name: str) -> dict[str, str]:
        return {"torchscript": f"{name}.torchscript.pt"}

    def build(self, job: ExportJob) -> Built:
        job.say("trace", "TorchScript")
        path = job.stage / self.file_names(job.name)["torchscript"]
        with writing(job.out / path.name):
            build_torchscript(job.module, job.spec, path)
        files = {"torchscript": path}
        return Built(files, self.runners(files, job.spec), {"torchscript": archive_call(job.spec)})

    def runners(self, files: Mapping[str, Path], spec: ModelSpec) -> list[Runner]:
        path = files["torchscript"]
        return [Runner("torchscript", loaded_or_raising(lambda: _torchscript_run(path, spec)))]


def _torchscript_run(path: Path, spec: ModelSpec) -> Run:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        archive = torch.jit.load(str(path), map_location="cpu")

    def run(x: tuple[Tensor, ...]) -> list:
        with torch.no_grad():
            return [to_numpy(t) for t in call_archive(archive, spec, x)]

    return run
