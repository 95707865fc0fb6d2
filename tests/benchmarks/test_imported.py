"""The imported-models benchmark's parts that need no timing: its case list and command line,
the corpus split, the training loop, and the tables built from hand-made records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.imported import (
    FAVOR,
    FULL_PLAN,
    ORIGINAL,
    QUICK_PLAN,
    Case,
    case_list,
    case_timing,
    parse_args,
    token_ids,
)
from benchmarks.imported_models import Recipe, split_corpus, train
from benchmarks.imported_report import LATENCY_HEADER, fidelity_table, latency_table, pairs
from benchmarks.paths import RESULTS_DIR

MAX_LOAD = 0.25


def table_cells(text: str) -> list[list[str]]:
    """The cells of each body row of the markdown table in ``text`` (header and rule dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# --- what a run measures ---------------------------------------------------------------------


def test_the_full_run_measures_the_cases_it_promises():
    cases = {(c.model, c.phase, c.n, c.runtime) for c in case_list(FULL_PLAN)}
    expected = {
        (model, phase, n, runtime)
        for model, phase, lengths in (
            ("char_lm", "prefill", (1024, 2048)),
            ("char_lm", "decode", (16, 2048)),
            ("scbert", "forward", (16906,)),
        )
        for n in lengths
        for runtime in (ORIGINAL, FAVOR)
    }
    assert cases == expected
    assert len(case_list(FULL_PLAN)) == len(expected)


def test_the_quick_run_runs_the_bidirectional_model_at_2048():
    assert {c.n for c in case_list(QUICK_PLAN) if c.model == "scbert"} == {2048}


def test_each_original_case_sits_next_to_its_export():
    cases = case_list(FULL_PLAN)
    for original, favor in zip(cases[::2], cases[1::2], strict=True):
        assert (original.runtime, favor.runtime) == (ORIGINAL, FAVOR)
        assert (original.model, original.phase, original.n) == (favor.model, favor.phase, favor.n)


def test_export_decode_steps_are_a_fixed_count_and_other_cases_get_the_budget():
    steps = case_timing(Case("char_lm", "decode", 2048, FAVOR), FULL_PLAN)
    assert (steps.budget_s, steps.min_runs) == (0.0, FULL_PLAN.decode_steps)
    for case in (Case("char_lm", "decode", 2048, ORIGINAL), Case("char_lm", "prefill", 16, FAVOR)):
        assert case_timing(case, FULL_PLAN) == FULL_PLAN.timing


@pytest.mark.parametrize(
    ("model", "vocab"), [("char_lm", 256), ("scbert", 7)], ids=["bytes", "expression-bins"]
)
def test_token_ids_fit_the_model(model, vocab):
    ids = token_ids(Case(model, "prefill", 5000, ORIGINAL))
    assert ids.shape == (5000,)
    assert ids.min() >= 0 and ids.max() == vocab - 1


def test_the_training_recipe_names_its_cache_file():
    names = {
        Recipe(300, 16, 128).cache_name(),
        Recipe(30, 16, 128).cache_name(),
        Recipe(300, 16, 128, lr=2e-3).cache_name(),
        Recipe(300, 16, 128, seed=1).cache_name(),
    }
    assert len(names) == 4


# --- command line ----------------------------------------------------------------------------


def test_defaults_write_to_the_results_folder_and_reuse_the_model():
    args = parse_args([])
    assert (args.out, args.quick, args.retrain, args.case) == (RESULTS_DIR, False, False, None)
    assert args.max_minutes > 0


def test_quick_does_not_wait_for_quiet(tmp_path):
    args = parse_args(["--quick", "--out", str(tmp_path), "--retrain"])
    assert (args.quick, args.out, args.retrain, args.max_minutes) == (True, tmp_path, True, 0.0)


def test_unknown_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--lengths", "1024"])
    assert "unrecognized arguments" in capsys.readouterr().err


# --- data and training -----------------------------------------------------------------------


def test_the_corpus_splits_into_its_first_90_and_last_10_percent():
    train_ids, held_out = split_corpus(b"abcdefghijklmnopqrst")
    assert bytes(train_ids.astype("uint8")) == b"abcdefghijklmnopqr"
    assert bytes(held_out.astype("uint8")) == b"st"
    assert train_ids.dtype == held_out.dtype == "int64"


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1], ids=["none", "all", "negative"])
def test_a_split_needs_both_parts(share):
    with pytest.raises(ValueError):
        split_corpus(b"abcdefghij", share)


class Bigram(nn.Module):
    """Next-token logits from the current token alone."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(tokens)


def test_training_learns_a_sequence_that_a_bigram_can_predict():
    # Each byte determines the next, so the loss can fall from ln(256) towards 0.
    ids = torch.tensor(list(b"abcd" * 64)).numpy()
    torch.manual_seed(0)
    losses = train(Bigram(256), ids, Recipe(steps=150, batch=4, seq=16, lr=0.1), lambda _: None)
    assert len(losses) == 150
    assert losses[0] > 5.0 > 0.1 > losses[-1]


# --- tables from hand-made records -----------------------------------------------------------


def record(model: str, phase: str, n: int, runtime: str, ms: float, mib: float, load=0.0):
    return {
        "model": model, "phase": phase, "n": n, "runtime": runtime, "median_ms": ms, "runs": 5,
        "peak_mib": mib, "hwm_reset": True, "threads": 2, "other_load": load,
    }  # fmt: skip


RECORDS = [
    record("char_lm", "prefill", 1024, ORIGINAL, 60.0, 32.0),
    record("char_lm", "prefill", 1024, FAVOR, 15.0, 14.46, load=0.5),
    record("char_lm", "decode", 2048, ORIGINAL, 130.0, 47.0),
    record("char_lm", "decode", 2048, FAVOR, 0.325, 0.0),
    {"model": "scbert", "phase": "forward", "n": 16906, "runtime": ORIGINAL, "error": "timed out"},
    record("scbert", "forward", 16906, FAVOR, 900.0, 300.0),
]


def test_the_latency_table_pairs_each_original_with_its_export():
    text = latency_table(RECORDS, MAX_LOAD)
    assert text.splitlines()[0] == "| " + " | ".join(LATENCY_HEADER) + " |"
    assert table_cells(text) == [
        ["causal LM", "prefill n=1024", "60.00", "15.00", "4.00x", "32.0", "14.5", "0.00 / 0.50†"],
        ["causal LM", "decode step at 2048", "130.00", "0.33", "400.00x", "47.0", "0.0",
         "0.00 / 0.00"],
        ["scBERT-shaped", "forward n=16906", "failed", "900.00", "-", "failed", "300.0",
         "- / 0.00"],
    ]  # fmt: skip


def test_a_case_without_its_export_is_an_error():
    with pytest.raises(ValueError, match="prefill"):
        pairs(RECORDS[:1])


def fidelity(nll_original: float, nll_imported: float, top1: float) -> dict:
    """A causal import's fidelity report in ``FidelityReport.to_json`` form."""
    random = {"inputs": "random tokens (2, 256)", "max_abs": 0.3, "max_rel": 0.08, "top1": 0.9,
              "nll_original": None, "nll_imported": None}  # fmt: skip
    held_out = {"inputs": "calibration data (8 x 512)", "max_abs": 0.0829, "max_rel": 0.01,
                "top1": top1, "nll_original": nll_original, "nll_imported": nll_imported}  # fmt: skip
    return {
        "original": "performer_pytorch.performer_pytorch.PerformerLM",
        "imported": "favor.ops.performer_compat.CompatLM",
        "exact": False,
        "targets": {"nll_ratio": 0.01, "top1": 0.95},
        "misses": [],
        "measurements": [random, held_out],
    }


@pytest.mark.parametrize(
    ("nll_imported", "top1", "nll_cells", "top1_cells"),
    [
        (2.018, 0.96, ("2.0180 (+0.90%)", "met"), ("96.0%", "met")),
        (2.03, 0.949, ("2.0300 (+1.50%)", "not met"), ("94.9%", "not met")),
        (1.90, 0.95, ("1.9000 (-5.00%)", "met"), ("95.0%", "met")),
    ],
    ids=["on-the-targets", "both-missed", "better-than-the-original"],
)
def test_the_fidelity_table_judges_the_held_out_figures(nll_imported, top1, nll_cells, top1_cells):
    nll, agreement, logits = table_cells(fidelity_table(fidelity(2.0, nll_imported, top1)))
    assert (nll[1], nll[2], nll[4]) == ("2.0000", *nll_cells)
    assert (agreement[2], agreement[4]) == top1_cells
    assert logits[2] == "0.0829"
