"""The targets table computed from synthetic benchmark records; nothing here runs a benchmark."""

from __future__ import annotations

import pytest

from benchmarks import targets
from benchmarks.targets import MET, NOT_MEASURED, NOT_MET


def case(n: int, method: str, ms: float, *, pct: float | None = None, mib: float = 10.0) -> dict:
    """An attention record as ``attention.json`` writes it."""
    return {"n": n, "method": method, "median_ms": ms, "peak_mib": mib, "pct_of_matmul": pct}


def skipped(n: int, method: str) -> dict:
    """A record of a case the sweep did not run."""
    return {"n": n, "method": method, "skipped": "skipped (time)"}


def row(rows: list[targets.Row], prefix: str) -> targets.Row:
    """The one row whose description starts with ``prefix``."""
    (found,) = [r for r in rows if r.what.startswith(prefix)]
    return found


def test_efficiency_met_only_when_every_long_length_reaches_the_goal() -> None:
    records = [
        case(4096, "favor_ort", 10, pct=10.0),  # below n = 8192: not judged
        case(8192, "favor_ort", 10, pct=65.0),
        case(16384, "favor_ort", 10, pct=61.0),
        case(8192, "favor_causal_ort", 10, pct=70.0),
        case(16384, "favor_causal_ort", 10, pct=59.9),
    ]
    assert targets.efficiency_row(records, "favor_ort", "x").status == MET
    causal = targets.efficiency_row(records, "favor_causal_ort", "x")
    assert causal.status == NOT_MET
    assert "59.9% (n=16384)" in causal.measured


def test_efficiency_not_measured_without_long_lengths() -> None:
    records = [case(1024, "favor_ort", 1, pct=90.0), skipped(8192, "favor_ort")]
    result = targets.efficiency_row(records, "favor_ort", "x")
    assert (result.measured, result.status) == (NOT_MEASURED, NOT_MEASURED)


@pytest.mark.parametrize(("sdpa_ms", "status"), [(460.0, MET), (440.0, NOT_MET)])
def test_sdpa_speedup_at_4096(sdpa_ms: float, status: str) -> None:
    records = [case(4096, "sdpa_causal", sdpa_ms), case(4096, "favor_causal_ort", 100.0)]
    result = targets.speedup_row(records, 4096, 4.5)
    assert result.status == status
    assert result.measured.startswith(f"{sdpa_ms / 100:.2f}x")


def test_speedup_uses_only_matching_lengths() -> None:
    # SDPA ran at 16384 only and FAVOR at 4096 only: no ratio may be formed across lengths.
    records = [case(16384, "sdpa_causal", 5000.0), case(4096, "favor_causal_ort", 1.0)]
    assert targets.speedup_row(records, 4096, 4.5).status == NOT_MEASURED
    assert targets.speedup_row(records, 16384, 18.0).status == NOT_MEASURED
    records += [case(16384, "favor_causal_ort", 250.0), case(4096, "sdpa_causal", 9.0)]
    assert targets.speedup_row(records, 16384, 18.0).measured.startswith("20.00x")
    assert targets.speedup_row(records, 4096, 4.5).measured.startswith("9.00x")


def test_skipped_baseline_is_not_measured() -> None:
    records = [skipped(16384, "sdpa_causal"), case(16384, "favor_causal_ort", 250.0)]
    assert targets.speedup_row(records, 16384, 18.0).status == NOT_MEASURED


def test_ort_vs_eager_must_hold_at_every_length() -> None:
    records = [
        case(1024, "favor_causal", 15.0),
        case(1024, "favor_causal_ort", 10.0),  # 1.5x: met exactly
        case(4096, "favor_causal", 100.0),
        case(4096, "favor_causal_ort", 50.0),
        case(8192, "favor_causal_ort", 80.0),  # no eager partner: ignored
    ]
    result = targets.ort_vs_eager_row(records, "favor_causal_ort", "favor_causal", "x")
    assert result.status == MET
    assert result.measured == "1.50x (n=1024), 2.00x (n=4096)"
    records.append(case(512, "favor_causal", 4.0))
    records.append(case(512, "favor_causal_ort", 4.0))
    result = targets.ort_vs_eager_row(records, "favor_causal_ort", "favor_causal", "x")
    assert result.status == NOT_MET


def test_memory_at_65536_and_linear_growth() -> None:
    records = [
        case(4096, "favor_causal_ort", 1, mib=100.0),
        case(16384, "favor_causal_ort", 1, mib=400.0),
        case(65536, "favor_causal_ort", 1, mib=1600.0),
        case(65536, "favor_causal", 1, mib=10.0),  # eager figures must not be read
    ]
    memory = targets.memory_row(records)
    assert (memory.measured, memory.status) == ("1600 MiB", NOT_MET)
    growth = targets.memory_growth_row(records)
    assert growth.status == MET
    assert growth.measured.startswith("slope 1.00")
    records[2] = case(65536, "favor_causal_ort", 1, mib=1400.0)
    assert targets.memory_row(records).status == MET


def test_quadratic_memory_is_not_linear() -> None:
    records = [case(n, "favor_causal_ort", 1, mib=n * n / 1e6) for n in (4096, 16384, 65536)]
    growth = targets.memory_growth_row(records)
    assert growth.status == NOT_MET
    assert growth.measured.startswith("slope 2.00")


def test_memory_not_measured_when_65536_skipped() -> None:
    records = [case(4096, "favor_causal_ort", 1, mib=100.0), skipped(65536, "favor_causal_ort")]
    assert targets.memory_row(records).status == NOT_MEASURED
    assert targets.memory_growth_row(records).status == NOT_MEASURED


def test_decode_rows() -> None:
    records = [
        {"context": 16, "favor_ms": 1.0, "softmax_ms": 0.5},
        {"context": 8192, "favor_ms": 1.1, "softmax_ms": 27.5},
    ]
    flat, versus = targets.decode_rows(records)
    assert (flat.status, versus.status) == (MET, MET)
    assert flat.measured.startswith("1.10x")
    assert versus.measured.startswith("25.00x")
    records[1] = {"context": 8192, "favor_ms": 3.0, "softmax_ms": 27.0}
    flat, versus = targets.decode_rows(records)
    assert (flat.status, versus.status) == (NOT_MET, NOT_MET)


def test_decode_not_measured_without_8192() -> None:
    records = [
        {"context": 16, "favor_ms": 1.0, "softmax_ms": 0.5},
        {"context": 1024, "favor_ms": 1.0, "softmax_ms": 2.5},
    ]
    assert [r.status for r in targets.decode_rows(records)] == [NOT_MEASURED, NOT_MEASURED]


def test_evaluate_without_runs_reports_every_target_not_measured() -> None:
    rows = targets.evaluate(None, None)
    # 2 efficiency, 2 SDPA speedups, 2 ORT vs eager, memory, memory growth, 2 decode.
    assert len(rows) == 10
    assert {r.status for r in rows} == {NOT_MEASURED}
    assert targets.render(rows).count("\n") == len(rows) + 1


def test_gpu_rows_only_when_gpu_cases_ran() -> None:
    records = [case(4096, "sdpa_causal_cuda", 4.0), case(4096, "favor_causal_cuda", 2.0)]
    rows = targets.attention_rows(records)
    gpu = row(rows, "favor_causal_cuda")
    assert (gpu.measured, gpu.status) == ("2.00x (n=4096)", targets.INFO)
    assert not [r for r in targets.attention_rows([]) if r.status == targets.INFO]
