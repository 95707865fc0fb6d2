"""Output files: all-or-nothing publishing, cleanup of what a failed export created, write errors
named by path, atomic single-file writes."""

import os
import stat
from pathlib import Path

import pytest

from favor.exporter import files
from favor.exporter.errors import ExportError
from favor.exporter.files import (
    atomic_write_bytes,
    check_targets,
    output_directory,
    publish,
    staging_dir,
    writing,
)
from favor.runtime import atomic

NAMES = ["m.onnx", "m.torchscript.pt", "m.manifest.json"]


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _previous_export(out: Path) -> dict[str, bytes]:
    out.mkdir()
    for name in NAMES:
        (out / name).write_bytes(f"previous {name}".encode())
    return _contents(out)


def _stage(stage: Path) -> None:
    for name in NAMES:
        (stage / name).write_bytes(f"new {name}".encode())


def _failing_replace(fail_at: int, error: BaseException):
    """``os.replace`` that raises ``error`` on its ``fail_at``-th call (1-based)."""
    real, calls = os.replace, []

    def replace(source, destination):
        calls.append(source)
        if len(calls) == fail_at:
            raise error
        real(source, destination)

    return replace


def test_publish_replaces_the_previous_export(tmp_path):
    out = tmp_path / "out"
    _previous_export(out)
    with staging_dir(out) as stage:
        _stage(stage)
        publish(stage, out, NAMES)
    assert _contents(out) == {name: f"new {name}".encode() for name in NAMES}


# Publishing over a previous export of 3 files takes 6 renames: 3 aside, 3 into place.
@pytest.mark.parametrize("fail_at", range(1, 7), ids=lambda n: f"rename-{n}")
@pytest.mark.parametrize(
    "error",
    [OSError(28, "No space left on device", "m.onnx"), KeyboardInterrupt()],
    ids=["oserror", "interrupt"],
)
def test_a_failed_publish_leaves_the_previous_export_as_it_was(fail_at, error, tmp_path):
    out = tmp_path / "out"
    before = _previous_export(out)
    with pytest.raises((ExportError, KeyboardInterrupt)), staging_dir(out) as stage:
        _stage(stage)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(files.os, "replace", _failing_replace(fail_at, error))
            publish(stage, out, NAMES)
    assert _contents(out) == before


def test_publish_refuses_a_directory_in_the_way_before_moving_anything(tmp_path):
    out = tmp_path / "out"
    before = _previous_export(out)
    (out / "m.torchscript.pt").unlink()
    (out / "m.torchscript.pt").mkdir()
    with staging_dir(out) as stage:
        _stage(stage)
        with pytest.raises(ExportError, match=r"m\.torchscript\.pt: a directory is in the way"):
            publish(stage, out, NAMES)
    assert (out / "m.onnx").read_bytes() == before["m.onnx"]
    assert (out / "m.manifest.json").read_bytes() == before["m.manifest.json"]


def test_published_files_get_the_permissions_of_a_plain_open(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    umask = os.umask(0o027)
    try:
        with staging_dir(out) as stage:
            _stage(stage)
            os.chmod(stage / "m.onnx", 0o600)  # as onnx creates external data
            publish(stage, out, NAMES)
    finally:
        os.umask(umask)
    assert {name: stat.S_IMODE((out / name).stat().st_mode) for name in NAMES} == dict.fromkeys(
        NAMES, 0o640
    )


@pytest.mark.parametrize(
    ("existing", "removed"),
    [("", "a"), ("a", "a/b"), ("a/b/c", "")],
    ids=["all-new", "parent-existed", "all-existed"],
)
def test_a_failed_body_removes_only_the_directories_it_created(existing, removed, tmp_path):
    if existing:
        (tmp_path / existing).mkdir(parents=True)
    with pytest.raises(RuntimeError), output_directory(tmp_path / "a/b/c") as out, staging_dir(out):
        raise RuntimeError("the export failed")
    kept = tmp_path / existing if existing else tmp_path
    assert kept.is_dir() and list(kept.iterdir()) == []
    if removed:
        assert not (tmp_path / removed).exists()


def test_a_directory_filled_meanwhile_is_kept(tmp_path):
    with pytest.raises(RuntimeError), output_directory(tmp_path / "a") as out:
        (out / "theirs.txt").write_text("someone else's")
        raise RuntimeError("the export failed")
    assert (tmp_path / "a" / "theirs.txt").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_write_error_names_the_file_and_the_cause():
    full = Path("/dev/full")
    message = r"^cannot write /dev/full: No space left on device$"
    with pytest.raises(ExportError, match=message), writing(full), open(full, "wb") as out:
        out.write(b"x" * 65536)


@pytest.mark.parametrize("link", ["same-path", "symlink"])
def test_check_targets_refuses_the_model_file(link, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"a model")
    target = model
    if link == "symlink":
        target = tmp_path / "out" / "m.onnx"
        target.parent.mkdir()
        target.symlink_to(model)
    with pytest.raises(ExportError, match="is the model being exported"):
        check_targets([tmp_path / "m.manifest.json", target], model)
    check_targets([tmp_path / "m.onnx.data", tmp_path / "m.manifest.json"], model)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (OSError(27, "File too large"), "File too large"),
        (OSError("quota exceeded"), "quota exceeded"),
    ],
    ids=["with-strerror", "without-strerror"],
)
def test_writing_turns_an_oserror_into_an_export_error_naming_the_path(error, cause, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as info, writing(path):
        raise error
    assert str(info.value) == f"cannot write {path}: {cause}"
    assert info.value.__cause__ is error


def test_writing_lets_other_errors_through():
    with pytest.raises(ValueError, match="a bug"), writing(Path("m.onnx")):
        raise ValueError("a bug")


def test_check_targets_refuses_a_directory_in_the_way(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ExportError, match=r"^cannot write .*m\.onnx: a directory is in the way$"):
        check_targets([tmp_path / "m.manifest.json", tmp_path / "m.onnx"])


def test_check_targets_accepts_a_symlink_to_a_directory_which_publishing_replaces(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "m.onnx").symlink_to(tmp_path / "elsewhere")
    check_targets([tmp_path / "m.onnx"], tmp_path / "model.pt")


def test_staging_dir_in_a_missing_directory_is_an_export_error(tmp_path):
    message = r"^cannot write to output directory .*/gone: No such file or directory$"
    with pytest.raises(ExportError, match=message), staging_dir(tmp_path / "gone"):
        pass


def test_staging_dir_is_removed_even_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError), staging_dir(tmp_path) as stage:
        (stage / "m.onnx").write_bytes(b"half")
        raise RuntimeError("the export failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_bytes_replaces_the_file(tmp_path):
    target = tmp_path / "m.manifest.json"
    target.write_bytes(b"previous")
    atomic_write_bytes(target, b"new")
    assert _contents(tmp_path) == {"m.manifest.json": b"new"}


def _failing_rename(_source, _destination):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fails", ["write", "rename"])
def test_a_failed_atomic_write_leaves_the_file_and_no_temporary(fails, tmp_path, monkeypatch):
    target = tmp_path / "m.manifest.json"
    target.write_bytes(b"previous")
    if fails == "rename":
        monkeypatch.setattr(atomic.os, "replace", _failing_rename)
        data, error = b"new", OSError
    else:
        data, error = "not bytes", TypeError
    with pytest.raises(error):
        atomic_write_bytes(target, data)
    assert _contents(tmp_path) == {"m.manifest.json": b"previous"}
