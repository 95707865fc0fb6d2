"""``--format pt2``: a torch.export program called as the ONNX graph is, at every length.

Every reference model and user module goes through the validation sweep (length 1, lengths
across chunk boundaries, batch 1 and more, and a causal LM's decode check); favor-validate
rebuilds the format from the manifest. The sample LM's program is then loaded and run in a
Python where favor cannot be imported, at lengths on both sides of its chunk size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from favor.exporter import ExportError, export, load_model, validate_export
from favor.exporter.model_specs import exportable
from favor.exporter.validation.sweep import case_names
from favor.ops.models import PerformerEncoder, PerformerLM
from tests.exporter.conftest import VOCAB
from tests.exporter.custom_models import TinyBlock, UsesQR

SAMPLE_LM = Path(__file__).resolve().parents[3] / "samples" / "char_lm" / "char_lm.pt"
SEQ_DECLARED = ["x:batch,seq,16:float32"]


def _models() -> dict[str, tuple[nn.Module, list[str]]]:
    torch.manual_seed(0)
    return {
        "causal-lm": (PerformerLM(VOCAB, 32, 2, 2, nb_features=16, chunk_size=8), []),
        "encoder-classifier": (
            PerformerEncoder(VOCAB, 32, 2, 2, num_classes=3, nb_features=16, chunk_size=8),
            [],
        ),
        "encoder-hidden": (PerformerEncoder(VOCAB, 32, 1, 2, nb_features=16, chunk_size=8), []),
        "module-two-outputs": (TinyBlock(), SEQ_DECLARED),
        "module-one-output": (nn.Sequential(nn.Linear(16, 8), nn.GELU()), SEQ_DECLARED),
        # QR has no ONNX translation; a program holds it as it is.
        "module-qr": (UsesQR(), ["x:batch,seq,4:float32"]),
    }


MODELS = _models()


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_program_passes_the_sweep_and_is_revalidated_from_the_manifest(kind, tmp_path):
    model, inputs = MODELS[kind]
    result = export(model.eval(), tmp_path, name="m", formats="pt2", inputs=inputs)
    assert result.files == {"pt2": tmp_path / "m.pt2"}
    assert result.report.passed, result.report.table()
    checks = [c for c in result.report.checks if c.backend == "pt2"]
    cases = {c.case for c in checks}
    assert cases == set(case_names(exportable(model, inputs)[1].sweep))
    assert any("seq=1" in case.split() for case in cases)  # one token, decode's length
    decoded = [c for c in result.report.checks if c.backend == "pt2 (decode)"]
    assert bool(decoded) == (kind == "causal-lm") and all(c.passed for c in decoded)
    again = validate_export(model, tmp_path)
    assert again.passed and {c.case for c in again.checks if c.backend == "pt2"} == cases


# Runs with ``python -I -S``: no current directory, no PYTHONPATH, and no site-packages .pth
# files, so the editable install's import hook for favor is not there either. argv: the
# site-packages holding torch, the program, the inputs, where to save the outputs.
CLEAN = """
import sys
sys.path.append(sys.argv[1])
try:
    import favor
except ImportError:
    pass
else:
    raise SystemExit("favor is importable: " + repr(favor))
import torch
program = torch.export.load(sys.argv[2]).module()
cases = torch.load(sys.argv[3])
results = {name: program(*inputs) for name, inputs in cases.items()}
# A decode step after the longest prompt, through the state that prompt returned.
longest = results[max(cases, key=lambda name: cases[name][0].shape[1])]
results["decode"] = program(cases["next"][0], *longest[1:])
torch.save(results, sys.argv[4])
"""
LENGTHS = (1, 64, 65, 300)  # the sample LM's chunk is 64


def test_the_sample_lm_program_runs_where_favor_cannot_be_imported(tmp_path):
    # The sweep is another test's; this one is about where the program runs.
    result = export(SAMPLE_LM, tmp_path, formats="pt2", text=False, validate_outputs=False)
    module, spec = exportable(load_model(SAMPLE_LM).module, [])
    cases = {f"seq={n}": spec.sample({"batch": 2, "seq": n}, seed=n) for n in LENGTHS} | {
        "next": spec.sample({"batch": 2, "seq": 1}, seed=7)
    }
    torch.save(cases, tmp_path / "cases.pt")
    site_packages = Path(torch.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN, site_packages, result.files["pt2"],
         tmp_path / "cases.pt", tmp_path / "results.pt"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "results.pt", weights_only=True)
    with torch.no_grad():
        want = {name: module(*inputs) for name, inputs in cases.items() if name != "next"}
        want["decode"] = module(cases["next"][0], *want[f"seq={max(LENGTHS)}"][1:])
    for name, outputs in want.items():
        assert len(got[name]) == len(spec.output_names)
        for output, g, w in zip(spec.output_names, got[name], outputs, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"{name}: {output}")


def test_a_torchscript_input_is_refused_in_one_line(tmp_path):
    archive = tmp_path / "linear.ts.pt"
    torch.jit.save(torch.jit.trace(nn.Linear(4, 3).eval(), torch.randn(2, 4)), str(archive))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        export(archive, out, formats="pt2", inputs=["x:batch,4:float32"])
    message = str(info.value)
    assert "\n" not in message
    assert "--format pt2" in message and "TorchScript" in message
    assert not out.exists()


class LengthBranch(nn.Module):
    """Doubles sequences longer than 8: its shapes decide its code, so no one program serves
    every length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[1] > 8 else x


def test_a_model_that_specializes_the_length_is_refused_in_one_line(tmp_path):
    with pytest.raises(ExportError) as info:
        export(LengthBranch(), tmp_path, formats="pt2", inputs=SEQ_DECLARED)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the model cannot be exported with torch.export: ")
    assert "seq" in message
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_cannot_claim_another_precision_than_its_program_holds(lm_checkpoint, tmp_path):
    # Validation tolerances follow the dtype read from the files: with only a .pt2, from the
    # program's tensors.
    export(lm_checkpoint, tmp_path, formats="pt2", dtype="fp16", validate_outputs=False)
    assert validate_export(lm_checkpoint, tmp_path).passed
    path = tmp_path / "lm.manifest.json"
    path.write_text(path.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    with pytest.raises(ExportError, match="records float32 weights, but its files hold float16"):
        validate_export(lm_checkpoint, tmp_path)
