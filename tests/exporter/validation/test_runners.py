"""What runners hand validation: errors as one report line, files that fail to load, arrays."""

import numpy as np
import pytest
import torch

from favor.exporter.errors import MissingKernelError
from favor.exporter.validation.runners import Runner, loaded_or_raising, raised, to_numpy


class Fail(Exception):  # noqa: N818 (onnxruntime names it so)
    """Stands in for onnxruntime's exception of that name."""


ORT_TEXT = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
    "/onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:47 "
    "onnxruntime::ReshapeHelper::ReshapeHelper(const TensorShape&, TensorShapeVector&, bool) "
    "input_shape_size == size was false."
)
TORCHSCRIPT_TEXT = (
    "The following operation failed in the TorchScript interpreter.\n"
    "Traceback of TorchScript (most recent call last):\n"
    '  File "code/__torch__.py", line 9, in forward\n'
    "\n"
    "RuntimeError: shape '[1, 12, 4, 4]' is invalid for input of size 32\n"
)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("bad value"), "raised ValueError: bad value"),
        (KeyError("x"), "raised KeyError: 'x'"),
        (
            RuntimeError(TORCHSCRIPT_TEXT),
            "raised RuntimeError: shape '[1, 12, 4, 4]' is invalid for input of size 32",
        ),
        (
            Fail(ORT_TEXT),
            "raised Fail: [ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while "
            "running Reshape node. input_shape_size == size was false.",
        ),
        (RuntimeError(""), "raised RuntimeError: "),
    ],
    ids=["plain", "key-error", "torchscript-traceback", "onnxruntime-source-location", "empty"],
)
def test_a_raised_error_becomes_one_line_with_its_cause(error, line):
    assert raised(error) == line


def test_a_long_cause_is_cut_to_300_characters():
    assert raised(ValueError("x" * 1000)) == "raised ValueError: " + "x" * 300


def test_a_file_that_fails_to_load_gives_a_run_that_raises_the_same_error():
    error = ValueError("not a model")

    def load():
        raise error

    run = loaded_or_raising(load)
    with pytest.raises(ValueError) as info:
        run((torch.zeros(1),))
    assert info.value is error


def test_a_missing_kernel_is_raised_at_once():
    def load():
        raise MissingKernelError("no kernel for LinearAttention")

    with pytest.raises(MissingKernelError):
        loaded_or_raising(load)


def test_a_file_that_loads_gives_its_run():
    def run(inputs):
        return [inputs[0].numpy()]

    assert loaded_or_raising(lambda: run) is run


def test_bfloat16_becomes_float32_exactly_and_other_dtypes_stay():
    values = [1.5, -2.25, 1.5 * 2.0**100, 2.0**-100]  # each exact in bfloat16
    bf16 = to_numpy(torch.tensor(values, dtype=torch.bfloat16))
    assert bf16.dtype == np.float32
    assert bf16.tolist() == values
    assert to_numpy(torch.ones(2, dtype=torch.float16)).dtype == np.float16
    assert to_numpy(torch.arange(3)).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("limits", "sizes", "takes"),
    [
        ({}, {"batch": 4, "seq": 999}, True),
        ({"max_tokens": 64}, {"batch": 2, "seq": 32}, True),
        ({"max_tokens": 64}, {"batch": 3, "seq": 32}, False),
        ({"max_sizes": {"seq": 16}}, {"batch": 9, "seq": 16}, True),
        ({"max_sizes": {"seq": 16}}, {"batch": 1, "seq": 17}, False),
    ],
    ids=["unlimited", "tokens-within", "tokens-over", "length-within", "length-over"],
)
def test_a_runner_takes_only_cases_within_its_limits(limits, sizes, takes):
    assert Runner("r", lambda inputs: [], **limits).takes(sizes) is takes
