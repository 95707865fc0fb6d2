import pytest

from favor.exporter import ExportError
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
