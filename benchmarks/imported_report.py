"""The report of :mod:`benchmarks.imported`: the fidelity and latency tables, the page, the plot.

A record is one case: ``model``, ``phase``, ``n`` and ``runtime`` (``original`` or ``favor``),
then either the harness's measurement (``median_ms``, ``runs``, ``peak_mib``, ``other_load``,
...) or the ``error`` of a case that failed. A fidelity report is
``FidelityReport.to_json()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import markdown_table, pyplot, save_figure

MODEL_LABELS = {"char_lm": "causal LM", "scbert": "scBERT-shaped"}
LATENCY_HEADER = (
    "model",
    "case",
    "original ms",
    "favor ms",
    "original / favor",
    "original peak MiB",
    "favor peak MiB",
    "other load",
)
LATENCY_ALIGN = "llrrrrrr"
# The bottom of both plots' log axes (ms and MiB).
PLOT_FLOOR = 0.1


def case_label(phase: str, n: int) -> str:
    """``prefill n=1024``, ``decode step at 2048``, ``forward n=16906``."""
    return f"decode step at {n}" if phase == "decode" else f"{phase} n={n}"


def describe(record: dict) -> str:
    """A case's measurement in a few words, for progress lines."""
    if "error" in record:
        return record["error"]
    return (
        f"{record['median_ms']:.2f} ms ({record['runs']} runs), peak {record['peak_mib']:.1f} "
        f"MiB, other load {record['other_load']:.2f}"
    )


def pairs(records: Sequence[dict]) -> list[tuple[dict, dict]]:
    """``(original, favor)`` records of each ``(model, phase, n)``, in the records' order."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for record in records:
        key = (record["model"], record["phase"], record["n"])
        by_case.setdefault(key, {})[record["runtime"]] = record
    missing = [key for key, sides in by_case.items() if set(sides) != {"original", "favor"}]
    if missing:
        raise ValueError(f"cases without both an original and a favor record: {missing}")
    return [(sides["original"], sides["favor"]) for sides in by_case.values()]


def _ms(record: dict) -> str:
    return "failed" if "error" in record else f"{record['median_ms']:.2f}"


def _mib(record: dict) -> str:
    return "failed" if "error" in record else f"{record['peak_mib']:.1f}"


def _load(record: dict, max_other_load: float) -> str:
    if "error" in record:
        return "-"
    mark = "†" if record["other_load"] > max_other_load else ""
    return f"{record['other_load']:.2f}{mark}"


def latency_table(records: Sequence[dict], max_other_load: float) -> str:
    """Original against favor per case: latency, their ratio, peak memory and foreign load.

    ``other load`` is the cores other processes used during each side (original / favor);
    † marks a side above ``max_other_load``, whose time is likely inflated.
    """
    rows = []
    for original, favor in pairs(records):
        ratio = (
            f"{original['median_ms'] / favor['median_ms']:.2f}x"
            if "error" not in original and "error" not in favor
            else "-"
        )
        rows.append(
            [
                MODEL_LABELS[original["model"]],
                case_label(original["phase"], original["n"]),
                _ms(original),
                _ms(favor),
                ratio,
                _mib(original),
                _mib(favor),
                f"{_load(original, max_other_load)} / {_load(favor, max_other_load)}",
            ]
        )
    return markdown_table(LATENCY_HEADER, rows, LATENCY_ALIGN)


def nll_measurement(fidelity: dict) -> dict:
    """The measurement of a fidelity report that has both NLLs (the calibration data's)."""
    for measurement in fidelity["measurements"]:
        if measurement["nll_original"] is not None and measurement["nll_imported"] is not None:
            return measurement
    raise ValueError("the fidelity report has no NLL measurement (no calibration data?)")


def _status(met: bool) -> str:
    return "met" if met else "not met"


def fidelity_table(fidelity: dict) -> str:
    """A causal import's NLL, top-1 agreement and logits difference against its targets.

    The NLL target is the exporter's: the import's NLL at most ``nll_ratio`` above the
    original's (a lower NLL meets it).
    """
    m, targets = nll_measurement(fidelity), fidelity["targets"]
    change = (m["nll_imported"] - m["nll_original"]) / m["nll_original"]
    rows = [
        [
            "next-byte NLL, nats",
            f"{m['nll_original']:.4f}",
            f"{m['nll_imported']:.4f} ({change:+.2%})",
            f"at most {targets['nll_ratio']:.0%} above the original's",
            _status(change <= targets["nll_ratio"]),
        ],
        [
            "top-1 agreement",
            "",
            f"{m['top1']:.1%}",
            f"≥ {targets['top1']:.0%}",
            _status(m["top1"] >= targets["top1"]),
        ],
        ["logits, largest abs difference", "", f"{m['max_abs']:.3g}", "", ""],
    ]
    header = ("figure", "original", "favor export", "target", "status")
    return markdown_table(header, rows, "lrrll")


def _call(config: dict) -> str:
    return "PerformerLM(" + ", ".join(f"{key}={value}" for key, value in config.items()) + ")"


def _training(training: dict) -> str:
    recipe = training["recipe"]
    when = "cached from an earlier run; training" if training["cached"] else "training"
    return (
        f"trained {recipe['steps']} steps x batch {recipe['batch']} x {recipe['seq']} bytes, "
        f"Adam {recipe['lr']:g}, seed {recipe['seed']}, on the first 90% of "
        f"`samples/char_lm/corpus.txt` ({when} took {training['seconds']:.0f} s while other "
        f"processes used {training['other_load']:.2f} cores; final training loss "
        f"{training['final_loss']:.3f} nats/byte)"
    )


def render(report: dict, max_other_load: float) -> str:
    """The whole page: setup, fidelity, latency and memory, notes."""
    machine, models = report["machine"], report["models"]
    exact = report["fidelity"]["scbert"]
    worst = max(m["max_rel"] for m in exact["measurements"])
    held_out = nll_measurement(report["fidelity"]["char_lm"])["inputs"]
    lines = [
        "# performer-pytorch models against their favor exports",
        "",
        f"- command: `{report['command']}`",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} logical cores; CPU features: "
        f"{', '.join(machine['cpu_features']) or 'none of avx2, avx512, vnni, amx'}",
        f"- torch {machine['torch']} (eager, the originals), onnxruntime {machine['onnxruntime']} "
        f"(the exports, favor.runtime's session options); {report['threads']} intra-op threads "
        "for both",
        f"- causal LM: `{_call(models['char_lm'])}`, {_training(report['training'])}",
        f"- scBERT-shaped: `{_call(models['scbert'])}`, random weights",
        *(["- **--quick run: a smoke test, not results**"] if report["quick"] else []),
        "",
        "## Fidelity of the causal import",
        "",
        "A causal import cannot reproduce the original exactly: performer-pytorch stabilizes "
        "its key features with a maximum over the whole sequence, future positions included, "
        "which a model that decodes token by token never sees. So it is judged by what a user "
        f"decides by, on the held-out last 10% of the corpus ({held_out}), from "
        "`ExportResult.fidelity`:",
        "",
        fidelity_table(report["fidelity"]["char_lm"]),
        "",
        "The bidirectional (scBERT-shaped) import reproduces the original: largest relative "
        f"difference of the logits {worst:.1e} (target ≤ {exact['targets']['max_rel']:g}).",
        "",
        "## Latency and peak memory",
        "",
        latency_table(report["results"], max_other_load),
        "",
        "![latency and peak memory, original against export](imported.png)",
        "",
        "- batch 1, fp32, CPU; median of the timed calls; peak memory is the call's working "
        "memory above what the loaded model and inputs already held, each case in its own process",
        "- prefill: the original's forward over n tokens; favor's `Generator.prefill` (logits at "
        "every position, the state for decoding after them)",
        "- decode step at n: the step that feeds the n-th token. The original keeps no cache, so "
        "it runs a full forward over all n tokens; favor runs `Generator.step` on a state "
        "prefilled with the n - 1 tokens before it",
        f"- other load: cores other processes used during the case (original / favor); † marks "
        f"more than {max_other_load:g}, where times are likely inflated",
    ]
    return "\n".join(lines) + "\n"


def _plot_label(record: dict) -> str:
    """A case's label on three short lines: model, phase, length."""
    case = case_label(record["phase"], record["n"]).replace(" n=", "\nn=").replace(" at ", "\nat ")
    return f"{MODEL_LABELS[record['model']]}\n{case}"


def _bar_value(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def write_plot(records: Sequence[dict], path: Path) -> None:
    """Latency and peak memory of each case, original and favor side by side (log scale, each
    bar labelled with its value)."""
    matched = [
        (original, favor)
        for original, favor in pairs(records)
        if "error" not in original and "error" not in favor
    ]
    labels = [_plot_label(original) for original, _ in matched]
    positions = range(len(matched))
    figure, axes = pyplot().subplots(1, 2, figsize=(13, 5))
    panels = (("median_ms", "latency (ms)"), ("peak_mib", "peak memory (MiB)"))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for offset, side, name in ((-0.2, 0, "performer-pytorch, eager"), (0.2, 1, "favor, ORT")):
            values = [pair[side][key] for pair in matched]
            # A log axis has no zero: a call that allocated nothing measurable sits at the floor.
            heights = [max(value, PLOT_FLOOR) for value in values]
            bars = axis.bar([p + offset for p in positions], heights, width=0.4, label=name)
            axis.bar_label(bars, [_bar_value(value) for value in values], fontsize=6)
        axis.set_yscale("log")
        axis.set_ylim(bottom=PLOT_FLOOR)
        axis.set_xticks(list(positions), labels, fontsize=7)
        axis.set_title(title)
        axis.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    save_figure(figure, path)
