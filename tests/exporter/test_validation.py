"""Validation of whole exports cannot be fooled: NaN weights, integer ranges, exports that do not
run or load."""

import math

import pytest
import torch
from torch import nn

from favor.exporter import ValidationError, export
from favor.exporter.model_specs import exportable
from tests.helpers import validate_files


class NaNLinear(nn.Module):
    """``(B, 4) -> (B, 3)`` through a Linear whose weights are all NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        nn.init.constant_(self.linear.weight, math.nan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_model_with_nan_weights_fails_and_says_where(dtype, tmp_path):
    with pytest.raises(ValidationError) as info:
        export(
            NaNLinear(), tmp_path, inputs=["x:batch,4:float32"], exporter="torchscript",
            dtype=dtype,
        )  # fmt: skip
    report = info.value.report
    assert report.rows() and not any(row["passed"] for row in report.rows())
    assert all(math.isinf(row["max_abs"]) for row in report.rows())  # never a 0 for NaN
    table = report.table()
    assert "FAIL at batch=2 (non-finite nan in PyTorch's output at index (0, 0))" in table
    assert list(tmp_path.iterdir()) == []


class TokenModel(nn.Module):
    """``tokens (1, N) int64 -> (1, N, 3)`` through a 100-row embedding; keeps every input."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.append(tokens.clone())
        return self.head(self.embed(tokens))


def test_a_fixed_shape_sweep_draws_each_case_over_the_embedding(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    result = export(
        model, tmp_path, inputs=["tokens:1,64:int64"], formats="torchscript",
        exporter="torchscript",
    )  # fmt: skip
    assert result.manifest.to_json()["inputs"][0]["range"] == [0, 100]
    assert [c.case for c in result.report.checks] == [f"fixed seed={s}" for s in (1, 2, 3)]
    # The last three forwards are the validation cases: three different draws over 100 ids.
    drawn = model.seen[-3:]
    assert len({tuple(t.flatten().tolist()) for t in drawn}) == 3
    ids = torch.cat(drawn).unique()
    assert len(ids) > 50 and int(ids.max()) >= 90 and int(ids.min()) >= 0


class BakesItsShape(nn.Module):
    """Eager reshapes any ``(B, N, 16)``; a traced graph keeps the example's B and N as constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), int(x.shape[1]), 4, 4) * 2


def test_an_export_that_raises_when_run_fails_validation(tmp_path):
    with pytest.raises(ValidationError) as info:
        export(
            BakesItsShape(), tmp_path, inputs=["x:batch,seq=12,16:float32"],
            exporter="torchscript",
        )  # fmt: skip
    assert info.value.exit_code == 1
    rows = {row["backend"]: row for row in info.value.report.rows()}
    for backend in ("onnxruntime-cpu", "torchscript"):
        assert not rows[backend]["passed"]
        assert rows[backend]["note"].startswith("(raised "), rows[backend]["note"]
    assert "FAIL at batch=1 seq=1 (raised" in info.value.report.table()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("file", ["onnx", "torchscript"])
def test_a_file_that_does_not_load_fails_validation(file, tmp_path):
    module, spec = exportable(nn.Linear(4, 3), ["x:batch,4:float32"])
    broken = tmp_path / f"broken.{file}"
    broken.write_bytes(b"not a model")
    report = validate_files(module, spec, {file: broken})
    assert not report.passed
    assert all(row["note"].startswith("(raised ") for row in report.rows())
