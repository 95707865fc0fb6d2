"""Reading manifests: file paths confined to the export directory, and structure checks."""

import json
import os
import shutil

import pytest

from favor.exporter import validate_export
from favor.exporter.errors import ExportError
from favor.runtime import ManifestError, Session
from favor.runtime.cli import main
from favor.runtime.manifest import load_manifest, read_manifest

MANIFEST = "lm.manifest.json"


def _copy(lm_dir, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(lm_dir, target)
    return target


def _edit(export_dir, edit):
    path = export_dir / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


def _point_onnx_at(path):
    return lambda manifest: manifest["files"]["onnx"].update(path=str(path))


def _outside(export_dir, exists):
    """A copy of the graph (same sha256) beside the export directory, or a name for none."""
    target = export_dir.parent / "elsewhere" / "lm.onnx"
    if exists:
        target.parent.mkdir()
        shutil.copy(export_dir / "lm.onnx", target)
    return target


ESCAPES = {
    "parent-dir": lambda d, target: _edit(d, _point_onnx_at(os.path.relpath(target, d))),
    "absolute": lambda d, target: _edit(d, _point_onnx_at(target)),
    "symlink-out": lambda d, target: (
        (d / "link.onnx").symlink_to(target),
        _edit(d, _point_onnx_at("link.onnx")),
    ),
    "external-data": lambda d, target: _edit(
        d,
        lambda m: m["files"].update(
            onnx_data={
                "path": os.path.relpath(target, d),
                "sha256": m["files"]["onnx"]["sha256"],
                "bytes": 1,
            }
        ),
    ),
}
OPENERS = {
    "session": lambda d: Session(d),
    "session-unverified": lambda d: Session(d, verify=False),
    "read-manifest": lambda d: read_manifest(d / MANIFEST),
    "load-manifest": lambda d: load_manifest(d / MANIFEST),
}


@pytest.mark.parametrize("opener", OPENERS.values(), ids=OPENERS.keys())
@pytest.mark.parametrize("escape", ESCAPES.values(), ids=ESCAPES.keys())
def test_files_outside_the_export_directory_are_refused_alike_whether_they_exist(
    lm_dir, tmp_path, escape, opener
):
    messages = []
    for exists in (True, False):
        export_dir = _copy(lm_dir, tmp_path / str(exists))
        escape(export_dir, _outside(export_dir, exists))
        with pytest.raises(ManifestError, match="outside the export directory") as caught:
            opener(export_dir)
        messages.append(str(caught.value).replace(str(tmp_path / str(exists)), "<root>"))
    assert messages[0] == messages[1]


def test_favor_run_and_favor_validate_refuse_an_escaping_path(lm_dir, tmp_path, capsys):
    export_dir = _copy(lm_dir, tmp_path)
    _edit(export_dir, _point_onnx_at(_outside(export_dir, exists=True)))
    assert main(["run", str(export_dir)]) == 2
    err = capsys.readouterr().err
    assert "outside the export directory" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ExportError, match="outside the export directory"):
        validate_export(tmp_path / "never-loaded.pt", export_dir)


def test_files_in_a_subdirectory_or_behind_an_inner_symlink_are_accepted(lm_dir, tmp_path):
    export_dir = _copy(lm_dir, tmp_path)
    (export_dir / "graphs").mkdir()
    (export_dir / "lm.onnx").rename(export_dir / "graphs" / "lm.onnx")
    (export_dir / "alias.onnx").symlink_to(export_dir / "graphs" / "lm.onnx")
    _edit(export_dir, _point_onnx_at("graphs/lm.onnx"))
    assert Session(export_dir).onnx_path == export_dir / "graphs" / "lm.onnx"
    _edit(export_dir, _point_onnx_at("alias.onnx"))
    assert Session(export_dir).onnx_path == export_dir / "alias.onnx"


def _drop(key, where=lambda m: m):
    return lambda m: where(m).pop(key)


BAD_MANIFESTS = {
    "missing-kind": (_drop("kind"), "kind must be one of causal-lm, encoder, module, got nothing"),
    "unknown-kind": (lambda m: m.update(kind="gan"), "kind must be one of .* got 'gan'"),
    "files-a-list": (lambda m: m.update(files=[]), r"files must be an object, got \[\]"),
    "no-onnx": (_drop("onnx", lambda m: m["files"]), "lists no ONNX file"),
    "file-entry-a-string": (
        lambda m: m["files"].update(onnx="lm.onnx"),
        r"files\.onnx must be an object, got 'lm\.onnx'",
    ),
    "file-without-path": (
        _drop("path", lambda m: m["files"]["onnx"]),
        r"files\.onnx\.path must be a non-empty string, got nothing",
    ),
    "file-without-sha256": (
        _drop("sha256", lambda m: m["files"]["onnx"]),
        r"files\.onnx\.sha256 must be a sha256 hex digest, got nothing",
    ),
    "path-null": (
        lambda m: m["files"]["onnx"].update(path=None),
        r"files\.onnx\.path must be a non-empty string, got null",
    ),
    "inputs-empty": (lambda m: m.update(inputs=[]), r"inputs must be a non-empty list, got \[\]"),
    "input-without-name": (
        _drop("name", lambda m: m["inputs"][0]),
        r"inputs\[0\]\.name must be a non-empty string, got nothing",
    ),
    "input-unknown-dtype": (
        lambda m: m["inputs"][0].update(dtype="complex64"),
        r"inputs\[0\]\.dtype must be one of .*, got 'complex64'",
    ),
    "input-bad-dim": (
        lambda m: m["inputs"][0].update(shape=["batch", 0]),
        r"inputs\[0\]\.shape\[1\] must be a positive integer or a symbol name, got 0",
    ),
    "input-bad-range": (
        lambda m: m["inputs"][0].update(range=[5, 5]),
        r"inputs\[0\]\.range must be \[low, high\] integers with low < high, got \[5, 5\]",
    ),
    "input-named-twice": (
        lambda m: m["inputs"].append(dict(m["inputs"][0])),
        r"inputs\[4\]\.name 'tokens' is listed twice",
    ),
    "output-not-an-object": (
        lambda m: m["outputs"].__setitem__(0, 7),
        r"outputs\[0\] must be an object, got 7",
    ),
    "state-unknown-input": (
        lambda m: m["state"][0].update(input="state.9"),
        r"state\[0\]\.input must be the name of one of the inputs, got 'state\.9'",
    ),
    "state-unknown-output": (
        lambda m: m["state"][0].update(output=None),
        r"state\[0\]\.output must be the name of one of the outputs, got null",
    ),
    "sequence-dim-a-number": (
        lambda m: m.update(sequence_dim=3),
        "sequence_dim must be a symbol name or null, got 3",
    ),
    "file-without-bytes": (
        _drop("bytes", lambda m: m["files"]["onnx"]),
        r"files\.onnx\.bytes must be an integer >= 0, got nothing",
    ),
    "state-not-from-zeros": (
        lambda m: m["state"][0].update(initial="ones"),
        r"state\[0\]\.initial must be 'zeros', got 'ones'",
    ),
    "missing-name": (_drop("name"), "name must be a non-empty string, got nothing"),
    "sweep-of-zero-batches": (
        lambda m: m.update(sweep=[{"batch": 0}]),
        "sweep must be a list of objects of positive integers",
    ),
    "two-non-state-outputs": (
        lambda m: m["state"].pop(),
        r"kind causal-lm needs exactly one output that is not state \(its logits\), got "
        r"'logits', 'new_state\.1'",
    ),
}


@pytest.mark.parametrize(("edit", "message"), BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_manifests_of_the_wrong_shape_are_manifest_errors(lm_dir, tmp_path, capsys, edit, message):
    export_dir = _copy(lm_dir, tmp_path)
    _edit(export_dir, edit)
    with pytest.raises(ManifestError, match=message):
        Session(export_dir)
    assert main(["run", str(export_dir)]) == 2
    err = capsys.readouterr().err
    assert "favor-run: error:" in err and len(err.strip().splitlines()) == 1


UNPARSABLE = {
    "deep-nesting": "[" * 200_000,
    "huge-integer": '{"format_version": ' + "1" * 5000 + "}",
    "not-utf8": b"\xff\xfe{",
    "not-an-object": "[1, 2]",
}


@pytest.mark.parametrize("reader", [read_manifest, load_manifest], ids=["dict", "typed"])
@pytest.mark.parametrize("text", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_unparsable_manifests_are_manifest_errors(lm_dir, tmp_path, capsys, text, reader):
    export_dir = _copy(lm_dir, tmp_path)
    path = export_dir / MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ManifestError, match=r"lm\.manifest\.json"):
        reader(path)
    assert main(["run", str(export_dir)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
