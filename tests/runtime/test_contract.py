"""The typed manifest: byte-identical round trips, older manifests, roles, and bad entries."""

import copy
import json

import pytest

from favor.runtime import Manifest, ManifestError, ModelKind, Sampler, TensorEntry
from favor.runtime.contract import FileEntry, StateEntry

DIGEST = "0" * 64
# A causal LM's manifest as the first favor-export wrote it: no fused_attention, dtype,
# quantization or torchscript entries yet.
FIRST_VERSION = {
    "format": "favor-export-manifest",
    "format_version": 1,
    "name": "lm",
    "kind": "causal-lm",
    "versions": {"favor-export": "0.0.1", "torch": "2.5.0", "onnx": "1.17.0",
                 "onnxruntime": "1.20.0", "onnxscript": None},
    "opset": 17,
    "exporter": "dynamo",
    "source": {"format": "checkpoint", "class": "favor.ops.models.PerformerLM", "config": {}},
    "inputs": [
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 30],
         "sampler": "data"},
        {"name": "state.0", "dtype": "float32", "shape": ["batch", 2, 4, 5], "sampler": "zeros"},
    ],
    "outputs": [
        {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 30]},
        {"name": "new_state.0", "dtype": "float32", "shape": ["batch", 2, 4, 5]},
    ],
    "state": [{"input": "state.0", "output": "new_state.0", "dtype": "float32",
               "shape": ["batch", 2, 4, 5], "initial": "zeros"}],
    "sequence_dim": "seq",
    "chunk_size": 8,
    "attention": [{"path": "blocks.0.attn", "causal": True}],
    "example_sizes": {"batch": 2, "seq": 21},
    "sweep": [{"batch": 1, "seq": 1}],
    "validation": {"passed": True, "atol": None, "rtol": None, "rows": []},
    "files": {"onnx": {"path": "lm.onnx", "sha256": DIGEST, "bytes": 1234}},
}  # fmt: skip
# The same manifest as today's favor-export writes it, key for key.
CURRENT_KEYS = [
    "format", "format_version", "name", "kind", "versions", "opset", "exporter", "fused_attention",
    "dtype", "quantization", "source", "inputs", "outputs", "state", "torchscript",
    "static", "sequence_dim", "chunk_size", "max_sequence_length", "text", "attention", "example_sizes",
    "sweep", "validation", "files",
]  # fmt: skip


def _export_manifest(directory, name):
    path = directory / f"{name}.manifest.json"
    return path.read_bytes(), json.loads(path.read_bytes())


@pytest.mark.parametrize(
    ("export", "name"),
    [("lm_dir", "lm"), ("encoder_dir", "encoder"), ("module_dir", "module")],
    ids=["causal-lm", "encoder", "module"],
)
def test_a_written_manifest_round_trips_byte_for_byte(request, export, name):
    written, parsed = _export_manifest(request.getfixturevalue(export), name)
    manifest = Manifest.from_json(parsed, f"{name}.manifest.json")
    assert (json.dumps(manifest.to_json(), indent=2) + "\n").encode() == written


def test_roles_of_a_causal_lm_export(lm_dir):
    manifest = Manifest.from_json(_export_manifest(lm_dir, "lm")[1], "lm.manifest.json")
    assert manifest.kind == "causal-lm" and manifest.kind is ModelKind.CAUSAL_LM
    assert manifest.tokens == TensorEntry(
        "tokens", "int64", ("batch", "seq"), (0, 30), Sampler.DATA
    )
    assert manifest.logits == TensorEntry("logits", "float32", ("batch", "seq", 30))
    assert [t.name for t in manifest.state_inputs] == ["state.offsets", "state.0", "state.1"]
    assert manifest.state[1] == StateEntry(
        "state.0", "new_state.0", "float32", ("batch", 2, 16, 17)
    )


def test_roles_of_an_encoder_and_a_module_export(encoder_dir, module_dir):
    encoder = Manifest.from_json(_export_manifest(encoder_dir, "encoder")[1], "encoder")
    assert encoder.tokens.name == "tokens" and encoder.logits is None
    assert encoder.input("key_padding_mask").sampler is Sampler.PADDING_MASK
    module = Manifest.from_json(_export_manifest(module_dir, "module")[1], "module")
    assert module.kind is ModelKind.MODULE
    assert module.tokens is None and module.logits is None and module.state_inputs == ()
    assert module.torchscript["call"].startswith("archive(x")
    assert set(module.files) == {"onnx", "torchscript"}


def test_a_first_version_manifest_parses_with_the_defaults_it_meant():
    manifest = Manifest.from_json(copy.deepcopy(FIRST_VERSION), "lm.manifest.json")
    assert manifest.fused_attention is False
    assert manifest.dtype == "float32"
    assert manifest.quantization is None and manifest.torchscript is None
    assert manifest.files == {"onnx": FileEntry("lm.onnx", DIGEST, 1234)}
    written = manifest.to_json()
    assert list(written) == CURRENT_KEYS
    assert written["fused_attention"] is False and written["dtype"] == "float32"
    assert written["quantization"] is None and written["torchscript"] is None
    assert written["static"] is None
    assert {k: v for k, v in written.items() if k in FIRST_VERSION} == FIRST_VERSION


def test_entries_a_manifest_may_lack_take_their_defaults():
    bare = copy.deepcopy(FIRST_VERSION)
    for key in ("sequence_dim", "chunk_size", "example_sizes", "sweep"):
        del bare[key]
    bare.pop("max_sequence_length", None)
    del bare["inputs"][1]["sampler"]
    bare["state"] = [{"input": "state.0", "output": "new_state.0"}]
    manifest = Manifest.from_json(bare, "lm.manifest.json")
    assert manifest.sequence_dim is None and manifest.chunk_size is None
    assert manifest.max_sequence_length is None
    assert manifest.example_sizes == {} and manifest.sweep == ()
    assert manifest.input("state.0").sampler is Sampler.DATA
    assert manifest.state == (
        StateEntry("state.0", "new_state.0", "float32", ("batch", 2, 4, 5), "zeros"),
    )


def test_a_manifest_shares_nothing_with_the_json_it_came_from_or_gave():
    source = copy.deepcopy(FIRST_VERSION)
    manifest = Manifest.from_json(source, "lm.manifest.json")
    source["versions"]["torch"] = "changed"
    source["sweep"][0]["batch"] = 99
    manifest.to_json()["attention"][0]["causal"] = False
    assert manifest.versions["torch"] == "2.5.0"
    assert manifest.sweep == ({"batch": 1, "seq": 1},)
    assert manifest.attention == ({"path": "blocks.0.attn", "causal": True},)


def _encoder(*inputs):
    manifest = copy.deepcopy(FIRST_VERSION) | {"kind": "encoder", "state": []}
    manifest["inputs"] = [{"name": n, "dtype": d, "shape": ["batch", "seq"]} for n, d in inputs]
    manifest["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}]
    return manifest


AMBIGUOUS = {
    "two-integer-inputs": (
        _encoder(("tokens", "int64"), ("positions", "int32")),
        r"kind encoder needs exactly one integer input that is not state \(its token ids\), "
        r"got 'tokens', 'positions'",
    ),
    "no-integer-input": (
        _encoder(("embeddings", "float32")),
        r"kind encoder needs exactly one integer input that is not state .*, got none",
    ),
    "causal-lm-two-outputs": (
        copy.deepcopy(FIRST_VERSION)
        | {"outputs": [*FIRST_VERSION["outputs"], {"name": "hidden", "dtype": "float32",
                                                   "shape": ["batch", "seq", 32]}]},
        r"kind causal-lm needs exactly one output that is not state \(its logits\), got "
        r"'logits', 'hidden'",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("manifest", "message"), AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_a_manifest_whose_roles_are_ambiguous_is_refused(manifest, message):
    with pytest.raises(ManifestError, match=r"invalid manifest m\.json: " + message):
        Manifest.from_json(manifest, "m.json")


def test_a_module_has_no_roles_to_be_ambiguous():
    module = _encoder(("a", "int64"), ("b", "int64")) | {"kind": "module"}
    assert Manifest.from_json(module, "m.json").tokens is None


UNKNOWN = {
    "kind": (lambda m: m.update(kind="gan"), r"kind must be one of causal-lm, encoder, module, got 'gan'"),
    "sampler": (lambda m: m["inputs"][0].update(sampler="noise"),
                r"inputs\[0\]\.sampler must be one of data, zeros, padding-mask, keep-mask, got 'noise'"),
    "input-dtype": (lambda m: m["inputs"][1].update(dtype="complex64"),
                    r"inputs\[1\]\.dtype must be one of float32, .*, bool, got 'complex64'"),
    "state-dtype": (lambda m: m["state"][0].update(dtype="uint4"),
                    r"state\[0\]\.dtype must be one of float32, .*, bool, got 'uint4'"),
    "weights-dtype": (lambda m: m.update(dtype=5), r"dtype must be one of float32, .*, got 5"),
}  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_an_unknown_kind_sampler_or_dtype_is_named(edit, message):
    manifest = copy.deepcopy(FIRST_VERSION)
    edit(manifest)
    with pytest.raises(ManifestError, match=r"invalid manifest m\.json: " + message):
        Manifest.from_json(manifest, "m.json")


def test_kinds_and_samplers_are_the_manifest_strings():
    assert [str(k) for k in ModelKind] == ["causal-lm", "encoder", "module"]
    assert [f"{s}" for s in Sampler] == ["data", "zeros", "padding-mask", "keep-mask"]
    assert json.dumps([ModelKind.ENCODER, Sampler.ZEROS]) == '["encoder", "zeros"]'
