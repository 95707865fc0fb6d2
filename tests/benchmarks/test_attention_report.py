"""The attention table and JSON records, built from synthetic results; nothing is timed."""

from __future__ import annotations

import pytest

from benchmarks.attention_methods import Config
from benchmarks.attention_report import TABLE_HEADER, json_report, render_table

CFG = Config(batch=1, heads=8, dim_head=64, features=128, chunk_size=64)
MATMUL = {"gflops": 150.0, "gflops_first_last": (150.0, 140.0), "runs": 5}
MAX_LOAD = 0.25


def measured(n: int, method: str, ms: float, flops: float = 3e9, load: float = 0.0) -> dict:
    return {
        "n": n, "method": method, "flops": flops, "median_ms": ms, "runs": 7, "peak_mib": 12.5,
        "hwm_reset": True, "threads": 2, "other_load": load, "spec": {"kind": "attention"},
    }  # fmt: skip


RESULTS = [
    measured(4096, "favor_causal_ort", 10.0),
    measured(4096, "sdpa_causal", 50.0, load=0.5),
    {"n": 4096, "method": "cumsum_causal", "flops": 1.0, "skipped": "skipped (memory: 9 GiB)"},
    measured(4096, "favor_causal_cuda", 1.0),
]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each line of the markdown table in ``text``, header and rule included."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture
def rows() -> dict[str, dict[str, str]]:
    """Each method's row as ``column -> cell``."""
    header, rule, *body = table_rows(render_table(MATMUL, RESULTS, MAX_LOAD))
    assert header == list(TABLE_HEADER)
    assert all(len(row) == len(header) for row in [rule, *body])
    return {row[1]: dict(zip(header, row, strict=True)) for row in body}


def test_the_table_has_a_row_per_case_under_its_columns(rows):
    assert list(rows) == [
        "favor causal, ORT", "sdpa causal", "cumsum causal (textbook)", "favor causal, CUDA"
    ]  # fmt: skip


def test_speedup_divides_sdpa_of_the_same_kind(rows):
    assert rows["favor causal, ORT"]["speedup vs SDPA"] == "5.00x"  # 50 ms / 10 ms
    # No CUDA SDPA ran, and CPU SDPA is no baseline for a GPU row.
    assert rows["favor causal, CUDA"]["speedup vs SDPA"] == ""


def test_efficiency_is_flops_over_time_against_the_matmul_rate(rows):
    # 3e9 FLOPs in 10 ms: 300 GFLOP/s, twice the 150 GFLOP/s matmul.
    assert rows["favor causal, ORT"]["GFLOP/s"] == "300.0"
    assert rows["favor causal, ORT"]["% of matmul"] == "200.0"
    assert rows["favor causal, CUDA"]["% of matmul"] == ""


def test_disturbed_and_skipped_cases_say_so(rows):
    assert rows["sdpa causal"]["ms"] == "50.0 †"
    assert rows["favor causal, ORT"]["ms"] == "10.0"
    assert rows["cumsum causal (textbook)"]["ms"] == "skipped (memory: 9 GiB)"


def test_json_records_add_rates_and_drop_the_spec():
    report = json_report(CFG, MATMUL, RESULTS)
    ort, _, skipped, cuda = report["results"]
    assert ort["gflops"] == pytest.approx(300.0) and ort["pct_of_matmul"] == pytest.approx(200.0)
    assert ort["label"] == "favor causal, ORT" and ort["causal"] is True and "spec" not in ort
    assert cuda["pct_of_matmul"] is None
    assert "gflops" not in skipped and skipped["skipped"].startswith("skipped")
    assert report["config"]["features"] == 128
