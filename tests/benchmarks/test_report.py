"""The shared report pieces: markdown tables, strict JSON and the argument types."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.arguments import lengths_arg
from benchmarks.report import markdown_table, write_json


def test_markdown_table_aligns_each_column_as_asked():
    text = markdown_table(["n", "method", "ms"], [["512", "favor", "1.5"]], "rlr")
    assert text.splitlines() == ["| n | method | ms |", "|---:|---|---:|", "| 512 | favor | 1.5 |"]


def test_markdown_table_aligns_left_by_default():
    assert markdown_table(["a", "b"], []).splitlines()[1] == "|---|---|"


@pytest.mark.parametrize(
    ("rows", "align"),
    [([["1"]], ""), ([["1", "2", "3"]], ""), ([], "l")],
    ids=["short-row", "long-row", "alignment-count"],
)
def test_markdown_table_refuses_cells_that_would_shift(rows, align):
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], rows, align)


def test_json_spells_non_finite_numbers_as_strings(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"errors": [float("nan"), float("inf"), 0.5], "shape": (1, 2)})
    # Strict parsers reject NaN and Infinity literals.
    loaded = json.loads(path.read_text(), parse_constant=pytest.fail)
    assert loaded == {"errors": ["nan", "inf", 0.5], "shape": [1, 2]}


def test_lengths_are_positive_integers():
    assert lengths_arg("512, 1024,") == (512, 1024)
    for bad in ("0", "a", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            lengths_arg(bad)
