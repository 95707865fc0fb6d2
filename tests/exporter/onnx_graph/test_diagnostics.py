"""A failed export is explained in the user's terms: the op, and the submodule that called it."""

import re

import pytest
import torch

from favor.exporter.onnx_graph.diagnostics import SUSPECT_ATEN, export_error, locate_ops
from tests.exporter.custom_models import UsesQR, UsesRandom

X = (torch.zeros(2, 4),)


@pytest.mark.parametrize(
    "spelling",
    ["aten::linalg_qr", "aten.linalg_qr.default"],
    ids=["torchscript-exporter", "dynamo-exporter"],
)
def test_the_op_an_exporter_names_is_traced_to_its_submodule(spelling):
    error = RuntimeError(f"Exporting the operator '{spelling}' to ONNX is not supported")
    assert str(export_error(UsesQR(), X, error)) == (
        "the model cannot be exported to ONNX: unsupported op aten::linalg_qr "
        "(called at inner.decompose: aten::linalg_qr)"
    )


def test_without_an_op_name_the_innermost_cause_and_suspect_ops_are_given():
    try:
        try:
            raise ValueError("the real cause")
        except ValueError as cause:
            raise RuntimeError("pages of advice\n\nmore advice") from cause
    except RuntimeError as error:
        message = str(export_error(UsesRandom(), X, error))
    assert message == (
        "the model cannot be exported to ONNX: ValueError: the real cause "
        "(called at noise: aten::randn_like)"
    )


def test_locate_ops_names_each_submodule_and_op_once():
    found = locate_ops(UsesRandom(), X, re.compile(r"^aten::(randn_like|mul)"))
    assert found == ["noise: aten::randn_like", "<root>: aten::mul"]
    assert locate_ops(UsesQR(), X, SUSPECT_ATEN) == ["inner.decompose: aten::linalg_qr"]
