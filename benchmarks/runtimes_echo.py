"""An echo of a causal LM export: the same inputs, outputs, state and manifest, no compute.

Each ``new_state.*`` output is its ``state.*`` input passed through, and the logits are the
token ids cast to float, shape ``(batch, seq, 1)``. Timed on every runtime, a decode step of the
echo is what a step costs besides the model's own arithmetic: the call into ONNX Runtime and
the state's way in and out of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from favor.runtime.manifest import find_manifest, read_manifest, sha256_file

ONNX_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "int32": TensorProto.INT32}
# Old enough for every onnxruntime the benchmark runs (onnxruntime-web 1.30 included).
IR_VERSION = 8
OPSET = 17


def _value(name: str, dtype: str, shape: list) -> onnx.ValueInfoProto:
    if dtype not in ONNX_TYPES:
        raise ValueError(f"the echo export handles {', '.join(ONNX_TYPES)} tensors, not {dtype}")
    return helper.make_tensor_value_info(name, ONNX_TYPES[dtype], shape)


def echo_graph(manifest: dict) -> onnx.ModelProto:
    """The echo of the causal LM ``manifest`` (a parsed manifest dict)."""
    wiring = {entry["input"]: entry["output"] for entry in manifest["state"]}
    tokens = next(e for e in manifest["inputs"] if e["name"] not in wiring)
    logits = next(e for e in manifest["outputs"] if e["name"] not in wiring.values())
    nodes = [helper.make_node("Identity", [i], [o]) for i, o in wiring.items()]
    nodes += [
        helper.make_node("Cast", [tokens["name"]], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids", "last"], [logits["name"]]),
    ]
    last = helper.make_tensor("last", TensorProto.INT64, [1], [-1])
    by_name = {e["name"]: e for e in manifest["inputs"] + manifest["outputs"]}
    graph = helper.make_graph(
        nodes,
        "echo",
        [_value(e["name"], e["dtype"], e["shape"]) for e in manifest["inputs"]],
        [_value(logits["name"], "float32", [*logits["shape"][:-1], 1])]
        + [_value(o, by_name[o]["dtype"], by_name[o]["shape"]) for o in wiring.values()],
        initializer=[last],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_echo_export(export_dir: Path, out_dir: Path) -> Path:
    """Write the echo of the causal LM export in ``export_dir`` to ``out_dir/<name>/``, with a
    manifest that lists only its graph; returns that directory."""
    manifest = read_manifest(find_manifest(export_dir), verify=False)
    if manifest["kind"] != "causal-lm" or not manifest["state"]:
        raise ValueError(f"{export_dir} is not a causal LM export with state: nothing to echo")
    target = out_dir / manifest["name"]
    target.mkdir(parents=True, exist_ok=True)
    onnx_path = target / f"{manifest['name']}.onnx"
    onnx.save(echo_graph(manifest), onnx_path)
    for entry in manifest["outputs"]:
        if entry["name"] not in {s["output"] for s in manifest["state"]}:
            entry["shape"] = [*entry["shape"][:-1], 1]
    manifest.pop("static", None)  # the echo has no fixed-shape pair
    manifest.update(
        text=None,
        torchscript=None,
        files={
            "onnx": {
                "path": onnx_path.name,
                "sha256": sha256_file(onnx_path),
                "bytes": onnx_path.stat().st_size,
            }
        },
    )
    (target / f"{manifest['name']}.manifest.json").write_text(json.dumps(manifest, indent=1))
    return target
