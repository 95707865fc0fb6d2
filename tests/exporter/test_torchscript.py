"""The TorchScript archive takes the model's own call, in a process where favor cannot load.

Each case exports a model, calls the archive from a clean ``python -I`` that imports only torch,
exactly as the README's "Calling the TorchScript archive" shows, and compares what comes back
with the PyTorch model run in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

from favor.exporter import export
from favor.exporter.manifest import SCHEMA_PATH
from favor.exporter.model_specs import exportable
from favor.ops.models import PerformerEncoder, PerformerLM
from tests.exporter.conftest import VOCAB
from tests.exporter.custom_models import TinyBlock
from tests.helpers import validate_files

# Runs with ``python -I`` (no current directory, no PYTHONPATH on sys.path) and with favor
# blocked, so nothing but torch can take part: argv is the archive, the inputs, the results.
CLEAN = """
import sys
sys.modules["favor"] = None
import torch
archive = torch.jit.load(sys.argv[1])
data = torch.load(sys.argv[2])
"""
SAVE = "\ntorch.save(results, sys.argv[3])\n"


LM_CALLS = """
logits = archive(data["tokens"])
prompt_logits, state = archive(data["tokens"], return_state=True)
next_logits, state = archive(data["next_tokens"], state, return_state=True)
results = {"logits": logits, "prompt_logits": prompt_logits, "next_logits": next_logits,
           "state": state}
"""


def _lm_expected(lm: PerformerLM, data: dict) -> dict:
    prompt_logits, state = lm(data["tokens"], return_state=True)
    next_logits, state = lm(data["next_tokens"], state, return_state=True)
    return {
        "logits": lm(data["tokens"]),
        "prompt_logits": prompt_logits,
        "next_logits": next_logits,
        "state": list(state),
    }


ENCODER_CALLS = """
results = {
    "unpadded": archive(data["tokens"]),
    "padded": archive(data["tokens"], key_padding_mask=data["key_padding_mask"]),
}
"""


def _encoder_expected(encoder: PerformerEncoder, data: dict) -> dict:
    return {
        "unpadded": encoder(data["tokens"]),
        "padded": encoder(data["tokens"], data["key_padding_mask"]),
    }


MODULE_CALLS = """
results = {"out": archive(data["x"])}
"""


def _module_expected(module: nn.Module, data: dict) -> dict:
    return {"out": module(data["x"])}


@dataclass
class Case:
    model: nn.Module
    inputs: list[str]  # --input declarations
    data: dict[str, torch.Tensor]
    calls: str  # the archive's calls, as documented; they fill ``results``
    expected: Callable[[nn.Module, dict], dict]  # ``results`` from the PyTorch model


def _cases() -> dict[str, Case]:
    torch.manual_seed(0)
    lm = PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8).eval()
    encoder = PerformerEncoder(VOCAB, 32, 2, 2, num_classes=3, nb_features=16, chunk_size=8)
    encoder.eval()
    single, pair = nn.Sequential(nn.Linear(16, 8), nn.GELU()), TinyBlock().eval()
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[0, 9:] = True  # the first sequence is padded, the second is not
    tokens = torch.randint(0, VOCAB, (2, 13))
    next_tokens = torch.randint(0, VOCAB, (2, 1))
    x = torch.randn(2, 11, 16)
    declared = ["x:batch,seq,16:float32"]
    return {
        "causal-lm": Case(
            lm, [], {"tokens": tokens, "next_tokens": next_tokens}, LM_CALLS, _lm_expected
        ),
        "encoder": Case(
            encoder,
            [],
            {"tokens": tokens, "key_padding_mask": mask},
            ENCODER_CALLS,
            _encoder_expected,
        ),
        "module-one-output": Case(single, declared, {"x": x}, MODULE_CALLS, _module_expected),
        "module-two-outputs": Case(pair, declared, {"x": x}, MODULE_CALLS, _module_expected),
    }


CASES = _cases()


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    case = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    result = export(case.model, out, name="model", formats="torchscript", inputs=case.inputs)
    return request.param, case, result


def _call_in_clean_python(archive: Path, case: Case, tmp_path: Path) -> dict:
    torch.save(case.data, tmp_path / "data.pt")
    done = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN + case.calls + SAVE,
         archive, tmp_path / "data.pt", tmp_path / "results.pt"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "results.pt", weights_only=True)


def test_the_archive_is_called_as_the_model_is_where_favor_cannot_be_imported(exported, tmp_path):
    kind, case, result = exported
    assert result.report.passed, result.report.table()
    got = _call_in_clean_python(result.torchscript_path, case, tmp_path)
    with torch.no_grad():
        want = case.expected(case.model, case.data)
    assert got.keys() == want.keys()
    for name in want:
        # One tensor comes back as a tensor, several as a tuple; the LM's state as a list.
        assert type(got[name]) is type(want[name]), (name, type(got[name]))
        torch.testing.assert_close(got[name], want[name], msg=f"{kind}: {name}")


@pytest.mark.parametrize(
    ("kind", "call", "returns"),
    [
        (
            "causal-lm",
            "archive(tokens, state=None, return_state=False)",
            "logits; with return_state=True, (logits, [new_state.offsets, new_state.0, "
            "new_state.1])",
        ),
        ("encoder", "archive(tokens, key_padding_mask=None)", "logits"),
        ("module-one-output", "archive(x)", "output"),
        ("module-two-outputs", "archive(x)", "(output_0, output_1)"),
    ],
    ids=["causal-lm", "encoder", "module-one-output", "module-two-outputs"],
)
def test_the_manifest_says_how_to_call_the_archive(kind, call, returns, tmp_path):
    case = CASES[kind]
    manifest = export(
        case.model, tmp_path, formats="torchscript", inputs=case.inputs, validate_outputs=False
    ).manifest.to_json()
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    entry = manifest["torchscript"]
    assert (entry["call"], entry["returns"]) == (call, returns)
    carried = [name for argument in entry["arguments"] for name in argument["inputs"]]
    assert carried == [i["name"] for i in manifest["inputs"]]
    if kind == "causal-lm":
        state = next(a for a in entry["arguments"] if a["name"] == "state")
        assert state["inputs"] == [s["input"] for s in manifest["state"]]
        assert state["optional"]


def test_the_manifest_has_no_call_without_an_archive(tmp_path):
    case = CASES["module-one-output"]
    manifest = export(
        case.model, tmp_path, formats="onnx", inputs=case.inputs, validate_outputs=False
    ).manifest.to_json()
    assert manifest["torchscript"] is None


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_validation_still_reads_a_causal_lm_archive_with_flat_state(tmp_path):
    module, spec = exportable(CASES["causal-lm"].model, [])
    with torch.no_grad():
        flat = torch.jit.trace(module, spec.example(), check_trace=False)
    flat.save(str(tmp_path / "flat.pt"))
    report = validate_files(module, spec, {"torchscript": tmp_path / "flat.pt"})
    assert report.passed, report.table()
    assert {row["backend"] for row in report.rows()} == {"torchscript"}
