import pytest
import torch
from torch import nn

from favor.exporter import ExportError
from favor.exporter.model_specs import exportable
from favor.exporter.specs import TensorSpec, declared_spec, parse_input_spec

GOOD = {
    "symbolic": ("x:batch,seq,256:float32", TensorSpec("x", ("batch", "seq", 256), "float32"), {}),
    "example-size": (
        "x:batch,seq=64:float16",
        TensorSpec("x", ("batch", "seq"), "float16"),
        {"seq": 64},
    ),
    "int-range": (
        "ids:batch,seq:int64:0..32000",
        TensorSpec("ids", ("batch", "seq"), "int64", 0, 32000),
        {},
    ),
    "fixed": ("m:3,4:bool", TensorSpec("m", (3, 4), "bool"), {}),
    "int-no-range": ("ids:1,256:int64", TensorSpec("ids", (1, 256), "int64", 0, None), {}),
}


@pytest.mark.parametrize(("text", "spec", "examples"), GOOD.values(), ids=GOOD.keys())
def test_parses(text, spec, examples):
    assert parse_input_spec(text) == (spec, examples)


BAD = {
    "two-parts": "x:batch,seq",
    "empty-name": ":batch:float32",
    "bad-dtype": "x:batch:float8",
    "bad-dim": "x:batch,-3:float32",
    "zero-dim": "x:0:float32",
    "range-on-float": "x:batch:float32:0..3",
    "empty-range": "x:batch:int64:5..5",
    "bad-name": "1x:batch:float32",
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_rejects_with_the_expected_form(text):
    with pytest.raises(ExportError, match="must look like NAME:DIMS:DTYPE"):
        parse_input_spec(text)


def test_declared_spec_sweeps_one_and_past_the_example():
    spec = declared_spec(["x:batch,seq=10,8:float32"], ("output",))
    assert spec.example_sizes == {"batch": 2, "seq": 10}
    assert {"batch": 1, "seq": 1} in spec.sweep and {"batch": 5, "seq": 21} in spec.sweep


def test_missing_declaration_is_an_error_not_a_guess():
    with pytest.raises(ExportError, match="declare each with --input"):
        declared_spec([], ("output",))


def test_an_integer_input_without_a_range_is_never_sampled():
    spec, _ = parse_input_spec("ids:1,256:int64")
    with pytest.raises(ExportError, match="'ids' has no value range to draw from"):
        spec.sample({}, torch.Generator().manual_seed(0))


class Reads(nn.Module):
    """Integer inputs ``tokens`` and ``positions`` ``(1, N)`` read by embeddings in ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.tokens = nn.Embedding(100, 4)
        self.positions = nn.Embedding(16, 4)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.how == "directly":
            return self.tokens(tokens) + self.positions(positions)
        if self.how == "through-a-view":
            flat = self.tokens(tokens.view(-1)) + self.positions(positions.reshape(-1))
            return flat.view(*tokens.shape, 4)
        if self.how == "by-keyword":
            return self.tokens(input=tokens) + self.positions(input=positions)
        if self.how == "both-read-tokens":  # ids beyond 16 would fail the second embedding
            return self.tokens(tokens) + self.positions(tokens) + positions.unsqueeze(-1)
        raise ValueError(self.how)


READ = ["directly", "through-a-view", "by-keyword"]


@pytest.mark.parametrize("how", READ)
def test_an_integer_range_comes_from_the_embedding_reading_the_input(how):
    _, spec = exportable(Reads(how), ["tokens:1,6:int64", "positions:1,6:int64"])
    assert {t.name: t.entry().range for t in spec.inputs} == {
        "tokens": (0, 100),
        "positions": (0, 16),
    }


def test_the_smallest_embedding_reading_an_input_bounds_it_and_a_declaration_is_kept():
    _, spec = exportable(
        Reads("both-read-tokens"), ["tokens:1,6:int64", "positions:1,6:int64:3..9"]
    )
    assert [(t.low, t.high) for t in spec.inputs] == [(0, 16), (3, 9)]


class Scales(nn.Module):
    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return counts.float() * 0.5


class CastsFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens.long())  # a copy of an int32 input: no longer the input


def _traced_casts_first() -> nn.Module:
    return torch.jit.trace(CastsFirst().eval(), (torch.zeros(1, 6, dtype=torch.int64),))


# How to build the model, and its declaration without a range.
NEEDS_A_RANGE = {
    "no-embedding": (Scales, "counts:1,6:int64"),
    "cast-before-the-embedding": (CastsFirst, "tokens:1,6:int32"),
    "torchscript-archive": (_traced_casts_first, "tokens:1,6:int64"),
}


@pytest.mark.parametrize(("build", "declaration"), NEEDS_A_RANGE.values(), ids=NEEDS_A_RANGE.keys())
def test_an_integer_range_the_model_does_not_tell_must_be_declared(build, declaration):
    model, name = build(), declaration.split(":")[0]
    with pytest.raises(
        ExportError, match=f"integer input '{name}' is declared without a value range"
    ):
        exportable(model, [declaration])
    _, spec = exportable(model, [declaration + ":0..50"])
    assert (spec.inputs[0].low, spec.inputs[0].high) == (0, 50)


def test_a_keep_mask_is_true_at_a_leading_prefix_of_at_least_one_token():
    spec = TensorSpec("mask", ("batch", "seq"), "bool", sampler="keep-mask")
    mask = spec.sample({"batch": 64, "seq": 9}, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask[:, 0].all()
    # True up to some position, False after it: never True again after a False.
    assert (mask[:, 1:] <= mask[:, :-1]).all()
    assert not mask.all(), "some rows must be masked"
