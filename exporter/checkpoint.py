"""Reading ``model.pt``: favor checkpoints, TorchScript archives and (opt-in) pickled modules.

Nothing here runs code from the file unless the user says so. Favor checkpoints and state dicts
are read with ``torch.load(weights_only=True)``; a model class is imported only from an
allow-listed module; a whole pickled module is unpickled only with ``trust_pickle=True``.

The default allow-list entry, ``favor``, names a namespace package: any ``favor/`` folder on
``sys.path`` (the working directory under ``python -c``, a script's folder, ``PYTHONPATH``) joins
it, so a class path under ``favor.`` says nothing about where its code lives. A module allowed
only by that entry is therefore located without importing it, and refused unless its file lies
inside the installed ``favor.ops``, ``favor.exporter`` or ``favor.runtime`` package directories.
A module the user names with ``--allow-module`` is imported as the import system finds it: the
user chose to trust it.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import itertools
import json
import pickle
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

# Imported here, with favor.exporter itself, so that where the installed favor packages live is
# settled by the user's own import before any checkpoint names a module under favor.
import favor.ops
import favor.runtime

from .errors import ExportError
from .files import atomic_write_bytes

CHECKPOINT_FAMILY = "favor-checkpoint/"
CHECKPOINT_FORMAT = f"{CHECKPOINT_FAMILY}1"
DEFAULT_ALLOWED_MODULES = ("favor",)
# Resolved, so that a symlinked or relative sys.path entry cannot place a file "inside" them.
INSTALLED_DIRS = tuple(
    Path(d).resolve() for d in (*favor.ops.__path__, *favor.runtime.__path__, Path(__file__).parent)
)
# How much more memory than its stored weights a model may take: non-persistent buffers (rotary
# frequencies, Hadamard matrices) are rebuilt from the config instead of being stored.
SIZE_FACTOR = 2
SIZE_SLACK_BYTES = 64 * 2**20
SPECIAL_FILES = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


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


def _check_installed(module_name: str, path: str) -> None:
    """Refuse ``module_name`` unless it and its parent packages come from installed favor files.

    The check is on the resolved file, not the name: a ``favor/ops/`` folder earlier on sys.path
    has the same names as the installed one. ``find_spec`` locates a module without running it;
    it imports only the parent package, which the previous step has already checked. ``favor``
    itself is a namespace package and runs no code.
    """
    parts = module_name.split(".")
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = Path(spec.origin).resolve() if spec and spec.has_location else None
        if origin is None or not any(origin.is_relative_to(d) for d in INSTALLED_DIRS):
            where = f"it would load {origin}" if origin else "no installed file provides it"
            raise ExportError(
                f"the checkpoint's class {path} is not part of the installed favor packages: "
                f"{where}; refusing to import {name}"
            )


def _import_class(path: str, user_modules: tuple[str, ...]) -> type[nn.Module]:
    module_name, _, class_name = path.rpartition(".")
    if not _is_allowed(module_name, user_modules):
        if not _is_allowed(module_name, DEFAULT_ALLOWED_MODULES):
            allowed = DEFAULT_ALLOWED_MODULES + user_modules
            raise ExportError(
                f"the checkpoint's class {path} is outside the allowed modules "
                f"({', '.join(allowed)}); pass --allow-module {module_name.split('.')[0]} "
                "if you trust it"
            )
        _check_installed(module_name, path)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ExportError(f"cannot import the checkpoint's class {path}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ExportError(f"the checkpoint's class {path} is not a torch.nn.Module")
    return cls


def _shape_only(cls: type[nn.Module], config: dict) -> nn.Module | None:
    """``cls(**config)`` with tensor shapes but no storage, or None where that cannot run.

    The meta device covers constructors made of torch ops. Fake tensors also take constructors
    that mix in tensors computed on the host (the ``sgq`` projection builds its quadrature rule
    with numpy, and joining that with meta tensors fails); such host work does run for real.
    """
    for mode in (lambda: torch.device("meta"), lambda: FakeTensorMode(allow_non_fake_inputs=True)):
        try:
            with mode():
                return cls(**config)
        except (TypeError, ValueError, MemoryError):
            raise  # the config itself is wrong: building for real would fail the same way
        except Exception:  # an op with no meta or fake kernel: try the next mode
            continue
    return None


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _human_bytes(count: int) -> str:
    value, units = float(count), ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.3g} {units[0]}"


def _check_size(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str) -> None:
    """Refuse a config whose model would far outgrow the weights stored for it.

    A state_dict that fits the model holds all of its parameters and persistent buffers, and
    it is already in memory, so this bounds what building the model can allocate.
    """
    needed = _nbytes(itertools.chain(model.parameters(), model.buffers()))
    stored = _nbytes(state_dict.values())
    if needed > SIZE_FACTOR * stored + SIZE_SLACK_BYTES:
        raise ExportError(
            f"building {path} from the checkpoint's config would take {_human_bytes(needed)}, "
            f"but its state_dict holds {_human_bytes(stored)}: the config does not describe "
            "these weights"
        )


def _build(
    cls: type[nn.Module], config: dict, state_dict: dict[str, torch.Tensor], path: str
) -> nn.Module:
    """``cls(**config)``, once a shape-only build has shown that its size fits ``state_dict``."""
    try:
        shaped = _shape_only(cls, config)
        if shaped is not None:
            _check_size(shaped, state_dict, path)
        return cls(**config)
    except (TypeError, ValueError, MemoryError, RuntimeError) as error:
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise ExportError(f"cannot build {path} from the checkpoint's config: {detail}") from None


def _load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        detail = detail.removeprefix(f"Error(s) in loading state_dict for {type(model).__name__}: ")
        raise ExportError(
            f"the state_dict does not match the config of {path}: {detail[:400]}"
        ) from None


def _content_problem(config: object, state_dict: object) -> str | None:
    """What is wrong with a checkpoint's decoded config and state_dict, or None."""
    if not isinstance(config, dict):
        return "its config is not a JSON object"
    if not isinstance(state_dict, dict):
        return f"its state_dict is of type {type(state_dict).__name__}, not a dict of tensors"
    for key, value in state_dict.items():
        if not isinstance(key, str):
            return f"its state_dict has a key of type {type(key).__name__}, {key!r}, not a name"
        if not isinstance(value, torch.Tensor):
            return f"its state_dict entry {key!r} is of type {type(value).__name__}, not a tensor"
    return None


def _from_checkpoint(payload: dict, source: Path, user_modules: tuple[str, ...]) -> LoadedModel:
    try:
        path, config = str(payload["class"]), json.loads(payload["config"])
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ExportError(f"{source} is a damaged favor checkpoint: {error}") from None
    problem = _content_problem(config, state_dict)
    if problem:
        raise ExportError(f"{source} is a damaged favor checkpoint: {problem}")
    model = _build(_import_class(path, user_modules), config, state_dict, path)
    _load_state(model, state_dict, path)
    return LoadedModel(model.eval(), "checkpoint", path, config)


def _from_payload(payload: object, source: Path, user_modules: tuple[str, ...]) -> LoadedModel:
    if not isinstance(payload, dict):
        raise ExportError(f"{source} holds a {type(payload).__name__}, not a model")
    fmt = payload.get("format")
    if fmt == CHECKPOINT_FORMAT:
        return _from_checkpoint(payload, source, user_modules)
    if isinstance(fmt, str) and fmt.startswith(CHECKPOINT_FAMILY):
        # favor-checkpoint/1 is the first format: any other was written by a later favor-export.
        raise ExportError(
            f"{source} is a favor checkpoint in a newer format, {fmt}; this version reads "
            f"{CHECKPOINT_FORMAT}: upgrade favor-export to load it"
        )
    raise ExportError(
        f"{source} holds a plain dict (a bare state_dict?) with no model class; write it with "
        "favor.exporter.save_checkpoint(model, path)"
    )


def _describe_start(data: bytes) -> str:
    if not data.strip():
        return "whitespace only"
    try:
        data.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"bytes {data[:8].hex()}"


def _check_regular_file(source: Path) -> None:
    """Refuse anything but a regular file, before opening it.

    Opening a FIFO blocks until a writer appears, and a device such as ``/dev/zero`` never ends,
    so the type is read with ``stat`` first.
    """
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise ExportError(f"model file not found: {source}") from None
    except OSError as error:
        raise ExportError(f"cannot read {source}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ExportError(f"{source} is a directory, not a model file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in SPECIAL_FILES if test(mode)), "special file")
        raise ExportError(f"{source} is a {kind}, not a regular file; a model must be a file")


def load_model(
    path: str | Path, *, allow_modules: tuple[str, ...] = (), trust_pickle: bool = False
) -> LoadedModel:
    """Detect the format of ``path`` and load the model in eval mode.

    Raises :class:`ExportError` with a one-line reason for anything that is not a readable
    favor checkpoint, TorchScript archive, or (with ``trust_pickle``) pickled ``nn.Module``.
    """
    source = Path(path)
    _check_regular_file(source)
    try:
        with open(source, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise ExportError(f"cannot read {source}: {error.strerror}") from None
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
        payload = _load_tensors(source)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise ExportError(
                f"{source} is a pickled Python object, and unpickling can run arbitrary code, "
                "so it "
                "was not loaded; re-save it with favor.exporter.save_checkpoint, or pass "
                "--trust-pickle if you trust where it came from"
            ) from None
    else:
        return _from_payload(payload, source, tuple(allow_modules))
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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A bare ``state_dict`` saved with ``torch.save``, loaded with ``weights_only=True``.

    For models rebuilt from their constructor arguments (``favor-export --import-as``): the
    file holds tensors only, so no code from it runs. An ExportError says what else it holds.
    """
    source = Path(path)
    _check_regular_file(source)
    try:
        payload = _load_tensors(source)
    except pickle.UnpicklingError:
        raise ExportError(
            f"{source} is not a bare state_dict: it holds Python objects beyond tensors; save "
            "model.state_dict() with torch.save"
        ) from None
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise ExportError(
            f"{source} is not a bare state_dict (a dict of named tensors): it holds a "
            f"{type(payload).__name__}"
        )
    return payload


def _load_tensors(source: Path) -> object:
    """``torch.load(weights_only=True)``: runs no code from the file. A pickle of other objects
    raises ``pickle.UnpicklingError``; a file torch cannot read at all is an ExportError."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ExportError(
            f"{source} cannot be read by torch.load: {str(error).splitlines()[0]}"
        ) from None
