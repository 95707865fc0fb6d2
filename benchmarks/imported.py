"""performer-pytorch originals against their favor exports: fidelity, latency and peak memory.

Run from the repository root::

    python -m benchmarks.imported             # full run, ~4 min on 2 cores (2 without training)
    python -m benchmarks.imported --quick     # smoke run, ~1.5 min: shorter training and timing
    python -m benchmarks.imported --out DIR --retrain

Two performer-pytorch ``PerformerLM`` models (:mod:`benchmarks.imported_models`) are exported
through ``favor.exporter.export``, which imports them into favor's ``CompatLM``:

* a byte-level causal LM, trained briefly on the sample corpus and cached in ``--out``. The
  import's fidelity is measured on the held-out bytes (``calibration_data``): both models' NLL,
  top-1 agreement and the logits' largest difference. Then, original eager PyTorch against the
  export in ONNX Runtime: prefill at n tokens (original: one forward; favor: ``Generator.prefill``)
  and one decode step at context n, the step that feeds the n-th token. The original keeps no
  cache, so its step is a full forward over all n tokens; favor's is ``Generator.step`` after
  prefilling the n - 1 before it (each timed step on its own prefilled Generator, so every
  step is at exactly n);
* an scBERT-shaped bidirectional model, random weights: one forward of batch 1 at n = 16906.

Every case runs in a fresh process (this module's hidden ``--case`` flag) and is timed and its
peak working memory measured by :mod:`benchmarks.harness`; torch and ONNX Runtime get the same
number of intra-op threads. Writes ``imported.md``, ``imported.json`` and ``imported.png`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import CaseRunner, Timing, measure_call
from benchmarks.imported_models import (
    CHAR_LM,
    CORPUS,
    SCBERT,
    Recipe,
    load_module,
    random_scbert,
    split_corpus,
    trained_char_lm,
)
from benchmarks.imported_report import describe, render, write_plot
from benchmarks.machine import machine_info
from benchmarks.paths import RESULTS_DIR
from benchmarks.report import say_written, write_json
from favor.exporter import export
from favor.runtime import Generator, Session

CASE_MODULE = "benchmarks.imported"
ORIGINAL, FAVOR = "original", "favor"
MODELS = {"char_lm": CHAR_LM, "scbert": SCBERT}
# (model, phase) pairs in the table's order; a phase's lengths come from the Plan.
PHASES = (("char_lm", "prefill"), ("char_lm", "decode"), ("scbert", "forward"))
WORK_DIR = "imported_work"


@dataclass(frozen=True)
class Plan:
    """What one run measures: lengths per phase, how the LM is trained, how cases are timed.

    Decode steps of the export are timed ``decode_steps`` times (a fixed count: each needs its
    own prefilled Generator).
    """

    prefill: tuple[int, ...]
    decode: tuple[int, ...]
    forward: tuple[int, ...]
    recipe: Recipe
    timing: Timing
    decode_steps: int

    def lengths(self, phase: str) -> tuple[int, ...]:
        return getattr(self, phase)


FULL_PLAN = Plan(
    prefill=(1024, 2048), decode=(16, 2048), forward=(16906,),
    recipe=Recipe(steps=300, batch=16, seq=128), timing=Timing(2.0, 5, 30.0), decode_steps=100,
)  # fmt: skip
QUICK_PLAN = Plan(
    prefill=(1024,), decode=(16, 2048), forward=(2048,),
    recipe=Recipe(steps=30, batch=16, seq=128), timing=Timing(0.3, 2, 5.0), decode_steps=20,
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One measurement: ``runtime`` (original or favor) running ``model``'s ``phase`` at ``n``."""

    model: str
    phase: str
    n: int
    runtime: str


def case_list(plan: Plan) -> list[Case]:
    """Every case of ``plan``, the original and the export side by side."""
    return [
        Case(model, phase, n, runtime)
        for model, phase in PHASES
        for n in plan.lengths(phase)
        for runtime in (ORIGINAL, FAVOR)
    ]


def case_timing(case: Case, plan: Plan) -> Timing:
    """The plan's timing; a fixed number of export decode steps (no budget: see :class:`Plan`)."""
    if case.runtime == FAVOR and case.phase == "decode":
        return Timing(0.0, plan.decode_steps, plan.timing.max_case_s)
    return plan.timing


# ---------------------------------------------------------------------------------------------
# Child side: one case per process
# ---------------------------------------------------------------------------------------------


def token_ids(case: Case) -> np.ndarray:
    """Random token ids ``(n,)`` of the case's model: speed does not depend on what they say."""
    vocab = MODELS[case.model]["num_tokens"]
    return np.random.default_rng(0).integers(0, vocab, case.n)


def original_call(case: Case, files: dict) -> Callable[[], object]:
    """The original in eager PyTorch over all ``n`` tokens: prefill, a forward, or (without a
    cache) one decode step."""
    model = load_module(Path(files["original"]))
    tokens = torch.from_numpy(token_ids(case)).unsqueeze(0)
    return lambda: model(tokens)


class PrefilledSteps:
    """``count`` Generators each prefilled with ``context``; each call steps the next one with
    ``token``, so every step runs at the same position and none runs past ``max_seq_len``."""

    def __init__(self, session: Session, context: np.ndarray, token: int, count: int) -> None:
        self.generators = []
        for _ in range(count):
            generator = Generator(session)
            generator.prefill(context)
            self.generators.append(generator)
        self.token = token

    def __call__(self) -> np.ndarray:
        if not self.generators:
            raise RuntimeError("more decode steps than prefilled Generators")
        return self.generators.pop().step(self.token)


def favor_call(case: Case, files: dict, steps: int) -> Callable[[], object]:
    """The export in ONNX Runtime through favor.runtime, with torch's thread count."""
    session = Session(files["export"], providers="cpu", threads=torch.get_num_threads())
    ids = token_ids(case)
    if case.phase == "forward":
        feeds = {"tokens": ids[None], "key_padding_mask": np.zeros((1, case.n), dtype=bool)}
        return lambda: session.run(feeds)
    if case.phase == "decode":
        return PrefilledSteps(session, ids[:-1], int(ids[-1]), steps)
    generator = Generator(session)

    def prefill() -> np.ndarray:
        generator.reset()
        return generator.prefill(ids)

    return prefill


def run_case(spec: dict) -> dict:
    """Build one case's call and measure it (``python -m benchmarks.imported --case SPEC``)."""
    case, timing = Case(**spec["case"]), Timing(**spec["timing"])
    if case.runtime == ORIGINAL:
        call = original_call(case, spec["files"])
    else:
        # One more step than timed calls: the timing loop's warm-up call takes one too.
        call = favor_call(case, spec["files"], timing.min_runs + 1)
    return measure_call(call, timing)


# ---------------------------------------------------------------------------------------------
# Parent side: models, exports, cases, report
# ---------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(label: str, record: dict) -> None:
    """One stderr line for a measured case."""
    case = f"{record['model']} {record['phase']} n={record['n']} {record['runtime']}"
    say(f"[{label}] {case}: {describe(record)}")


def export_model(original: Path, out: Path, calibration: Path | None = None) -> dict:
    """Export the pickled ``original`` (importing it into favor) to ``out``; the fidelity."""
    result = export(
        load_module(original), out, name="model", formats="onnx", calibration_data=calibration,
        progress=lambda stage, message: say(f"  {stage}: {message}"),
    )  # fmt: skip
    assert result.fidelity is not None, "export did not import the performer-pytorch model"
    return result.fidelity.to_json()


def prepare_models(out: Path, recipe: Recipe, retrain: bool) -> tuple[dict, dict, dict]:
    """Train (or reuse) the causal LM, write the scBERT-shaped model, export both into ``out``.

    Returns each model's files (``original``, ``export``), each import's fidelity report (JSON)
    and the LM's training facts.
    """
    work = out / WORK_DIR
    lm_path, training = trained_char_lm(work, recipe, retrain=retrain, say=say)
    held_out = work / "held_out.npy"
    np.save(held_out, split_corpus(CORPUS.read_bytes())[1])
    files = {
        "char_lm": {"original": str(lm_path), "export": str(work / "char_lm_favor")},
        "scbert": {"original": str(work / "scbert.pt"), "export": str(work / "scbert_favor")},
    }
    random_scbert(Path(files["scbert"]["original"]))
    fidelity = {}
    for name, calibration in (("char_lm", held_out), ("scbert", None)):
        say(f"exporting {name}")
        model_files = files[name]
        fidelity[name] = export_model(
            Path(model_files["original"]), Path(model_files["export"]), calibration
        )
    return files, fidelity, training


def run_cases(runner: CaseRunner, plan: Plan, files: dict) -> list[dict]:
    """Measure every case in its own process; one record each, progress on stderr."""
    cases = case_list(plan)
    records, specs = [], []
    for index, case in enumerate(cases, 1):
        spec = {
            "case": asdict(case),
            "timing": vars(case_timing(case, plan)),
            "files": files[case.model],
        }
        record = {**asdict(case), **runner.measure(spec)}
        progress(f"{index}/{len(cases)}", record)
        records.append(record)
        specs.append(spec)
    for index, (record, spec) in enumerate(zip(records, specs, strict=True)):
        again = runner.remeasure(record, spec)
        if again is not None:
            records[index] = again
            progress("again", again)
    return records


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--case`` is internal (one case, run in a child process)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.imported",
        description="Import performer-pytorch models into favor, measure the import's fidelity, "
        "and time the originals (eager PyTorch) against the exports (ONNX Runtime). Writes "
        "imported.md, imported.json and imported.png to --out.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: prefill at n = {', '.join(map(str, QUICK_PLAN.prefill))}, the "
        f"scBERT-shaped forward at n = {', '.join(map(str, QUICK_PLAN.forward))}, an LM trained "
        f"{QUICK_PLAN.recipe.steps} steps, short timing, no waiting for quiet",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="output folder; the trained LM is cached in its imported_work/ (default: "
        "benchmarks/results/)",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train the LM again even if a cached one exists"
    )
    harness.add_arguments(parser, max_minutes=15.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_minutes = 0.0
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """The whole benchmark: print the table, write the report files; the JSON report."""
    started = time.perf_counter()
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    machine = machine_info()
    features = ", ".join(machine["cpu_features"]) or "none of the listed ones"
    say(f"CPU: {machine['cpu']}, {machine['cores']} logical cores; features: {features}")
    # In a process of its own: training and exporting raise a process's peak RSS, and a case's
    # process inherits its parent's peak as the floor of the ru_maxrss its memory figure reads.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        prepared = pool.submit(prepare_models, args.out, plan.recipe, args.retrain)
        files, fidelity, training = prepared.result()
    records = run_cases(CaseRunner(CASE_MODULE, args), plan, files)
    report = {
        "command": " ".join(["python -m benchmarks.imported", *argv]),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "models": MODELS,
        "training": training,
        "fidelity": fidelity,
        "results": records,
    }
    text = render(report, args.max_other_load)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "imported.md").write_text(text)
    write_json(args.out / "imported.json", report)
    write_plot(records, args.out / "imported.png")
    written = ["imported.md", "imported.json", "imported.png"]
    say_written(written, args.out, time.perf_counter() - started)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--case``, a single case)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    run(args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
