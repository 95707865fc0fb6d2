"""Reading ``model.pt``: favor checkpoints, TorchScript archives and (opt-in) pickled modules.

Nothing here runs code from the file unless the user says so. Favor checkpoints and state dicts
are read with ``torch.load(weights_only=True)``; a model class is imported only from an
allow-listed module; a whole pickled module is unpickled only with ``trust_pickle=True``.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError
from .files import atomic_write_bytes

CHECKPOINT_FORMAT = "favor-checkpoint/1"
DEFAULT_ALLOWED_MODULES = ("favor",)


@dataclass
class LoadedModel:
    """A model ready to export, and where it came from."""

    module: nn.Module
    source: str  # "checkpoint", "torchscript", "pickle" or "module"
    class_path: str | None = None
    config: dict | None = None


def class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` as a favor checkpoint: its import path, JSON config and state_dict.

    The model must have a ``config()`` method returning its constructor arguments (the reference
    models do). The file is written through a temporary name, so it is complete or absent.
    """
    config_fn = getattr(model, "config", None)
    if not callable(config_fn):
        raise ExportError(
            f"{class_path(model)} has no config() method giving its constructor arguments"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "class": class_path(model),
        "config": json.dumps(config_fn(), sort_keys=True),
        "state_dict": model.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _is_allowed(module_name: str, allowed: tuple[str, ...]) -> bool:
    return any(module_name == a or module_name.startswith(a + ".") for a in allowed)


def _instantiate(path: str, config: dict, allowed: tuple[str, ...]) -> nn.Module:
    module_name, _, class_name = path.rpartition(".")
    if not _is_allowed(module_name, allowed):
        raise ExportError(
            f"the checkpoint's class {path} is outside the allowed modules "
            f"({', '.join(allowed)}); pass --allow-module {module_name.split('.')[0]} "
            "if you trust it"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ExportError(f"cannot import the checkpoint's class {path}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ExportError(f"the checkpoint's class {path} is not a torch.nn.Module")
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        raise ExportError(f"cannot build {path} from the checkpoint's config: {error}") from None


def _load_state(model: nn.Module, state_dict: dict, path: str) -> None:
    try:
        result = model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        detail = detail.removeprefix(f"Error(s) in loading state_dict for {type(model).__name__}: ")
        raise ExportError(
            f"the state_dict does not match the config of {path}: {detail[:400]}"
        ) from None
    del result


def _from_payload(payload: object, source: Path, allowed: tuple[str, ...]) -> LoadedModel:
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        try:
            path, config = str(payload["class"]), json.loads(payload["config"])
            state_dict = payload["state_dict"]
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ExportError(f"{source} is a damaged favor checkpoint: {error}") from None
        model = _instantiate(path, config, allowed)
        _load_state(model, state_dict, path)
        return LoadedModel(model.eval(), "checkpoint", path, config)
    if isinstance(payload, dict):
        raise ExportError(
            f"{source} holds a plain dict (a bare state_dict?) with no model class; write it with "
            "favor.exporter.save_checkpoint(model, path)"
        )
    raise ExportError(f"{source} holds a {type(payload).__name__}, not a model")


def _describe_start(data: bytes) -> str:
    if not data.strip():
        return "whitespace only"
    try:
        data.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"bytes {data[:8].hex()}"


def load_model(
    path: str | Path, *, allow_modules: tuple[str, ...] = (), trust_pickle: bool = False
) -> LoadedModel:
    """Detect the format of ``path`` and load the model in eval mode.

    Raises :class:`ExportError` with a one-line reason for anything that is not a readable
    favor checkpoint, TorchScript archive, or (with ``trust_pickle``) pickled ``nn.Module``.
    """
    source = Path(path)
    allowed = DEFAULT_ALLOWED_MODULES + tuple(allow_modules)
    if not source.exists():
        raise ExportError(f"model file not found: {source}")
    if source.is_dir():
        raise ExportError(f"{source} is a directory, not a model file")
    with open(source, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise ExportError(f"{source} is empty")
    is_zip = zipfile.is_zipfile(source)
    if head.startswith(b"PK") and not is_zip:
        raise ExportError(f"{source} is a damaged zip archive (truncated or corrupt)")
    if not is_zip and not head.startswith(b"\x80"):
        raise ExportError(
            f"{source} is not a PyTorch file (favor checkpoint, TorchScript archive or pickled "
            f"module): it holds {_describe_start(head)}"
        )
    if is_zip:
        try:
            with zipfile.ZipFile(source) as archive:
                names = archive.namelist()
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as error:
            raise ExportError(f"{source} is a damaged zip archive: {error}") from None
        if bad is not None:
            raise ExportError(f"{source} is a damaged zip archive: member {bad} is corrupt")
        if any("/code/" in name for name in names) and any(
            n.endswith("constants.pkl") for n in names
        ):
            try:
                return LoadedModel(
                    torch.jit.load(str(source), map_location="cpu").eval(), "torchscript"
                )
            except RuntimeError as error:
                raise ExportError(
                    f"{source} is a damaged TorchScript archive: {str(error).splitlines()[0]}"
                ) from None
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise ExportError(
                f"{source} is a pickled Python object, and unpickling can run arbitrary code, "
                "so it "
                "was not loaded; re-save it with favor.exporter.save_checkpoint, or pass "
                "--trust-pickle if you trust where it came from"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ExportError(
            f"{source} cannot be read by torch.load: {str(error).splitlines()[0]}"
        ) from None
    else:
        return _from_payload(payload, source, allowed)
    try:
        module = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as error:  # unpickling user code can raise anything
        raise ExportError(
            f"{source} cannot be unpickled: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(module, nn.Module):
        raise ExportError(f"{source} unpickles to a {type(module).__name__}, not a torch.nn.Module")
    config = module.config() if callable(getattr(module, "config", None)) else None
    return LoadedModel(module.eval(), "pickle", class_path(module), config)
