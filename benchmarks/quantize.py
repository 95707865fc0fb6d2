"""``--quantize int8`` on the sample models' real outputs: accuracy, perplexity, size, latency.

    python -m benchmarks.quantize [--encoder-steps 150] [--out benchmarks/results]

- The sample encoder (``samples/encoder``) is trained from scratch (about 30 s on 2 cores),
  exported float32 and with every int8 scheme (``favor-export --int8-scheme``), and each graph
  classifies its 1000-sequence test set through ``favor.runtime``: accuracy, changed
  predictions, file size, time for the whole test set.
- The shipped char-LM (``samples/char_lm/char_lm.pt``) is exported the same ways, and each graph
  scores the held-out last 10% of ``corpus.txt`` in consecutive 256-character windows, as
  ``samples/char_lm/train.py`` defines its validation loss: nats per character and perplexity,
  file size, prefill and decode latency.

The int8 exports are validated (their parity budget included) as ``favor-export`` would; a
scheme that misses its budget on this CPU is reported as such and measured anyway. The header
names the CPU's int8-relevant features (AVX2, AVX-512 VNNI, ...), which decide both speed and
whether 8-bit weights saturate. Every session runs on the CPU with one intra-op thread, so the latency ratio compares kernels rather
than thread scheduling. Prints a markdown table; writes ``quantize.md`` and ``quantize.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from benchmarks.machine import INT8_FEATURES, machine_info
from benchmarks.paths import REPO_ROOT, RESULTS_DIR
from benchmarks.report import markdown_table, write_json
from benchmarks.timing import interleaved_median_ms
from favor.exporter import ValidationError, export, load_model
from favor.exporter.quantize import INT8_SCHEMES
from favor.runtime import Session

SAMPLES = REPO_ROOT / "samples"
DEFAULT_OUT_DIR = RESULTS_DIR
FLOAT = "float32"
VARIANTS = (FLOAT, *INT8_SCHEMES)  # the float graph, then every int8 scheme
BUDGET_BACKEND = "onnxruntime-cpu int8"  # validation's label for the int8 graph


def _sample_module(path: Path) -> ModuleType:
    """Import a sample script by path: the samples are scripts, not an installed package."""
    sys.path.insert(0, str(path.parent))  # they import their siblings (task.py)
    spec = importlib.util.spec_from_file_location(f"favor_sample_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _budget_rows(report) -> list[dict]:
    return [r for r in report.rows() if "rel_rms" in r] if report else []


def _export_variant(model: object, out: Path, variant: str, say) -> dict:
    """Export ``model`` as ``variant`` (ONNX only); return the export's facts.

    An int8 scheme is validated as ``favor-export`` would, since its budget is what this
    benchmark reports on; one that misses its budget on this CPU is exported again without
    validation, so that its perplexity and speed still show what missing it means.
    """
    say(f"exporting {variant}")
    quantized = variant != FLOAT
    options = {"quantize": "int8", "int8_scheme": variant} if quantized else {}
    start = time.perf_counter()
    try:
        result = export(
            model, out / variant, formats="onnx", name="model", validate_outputs=quantized,
            **options,
        )  # fmt: skip
        report, passed = result.report, True
    except ValidationError as error:
        say(f"{variant} misses its parity budget on this CPU")
        result = export(
            model, out / variant, formats="onnx", name="model", validate_outputs=False, **options
        )
        report, passed = error.report, False
    return {
        "dir": result.output_dir,
        "bytes": result.onnx_path.stat().st_size,
        "export_s": time.perf_counter() - start,
        "budget_passed": passed if quantized else None,
        "budget_rows": _budget_rows(report),
        "quantization": result.manifest.quantization,
    }


def _export_all(model: object, out: Path, say) -> dict[str, dict]:
    return {variant: _export_variant(model, out, variant, say) for variant in VARIANTS}


def _session(export_dir: Path) -> Session:
    return Session(export_dir, providers="cpu", threads=1)


def encoder_report(steps: int, seed: int, work: Path, say) -> dict:
    """Train the sample encoder, export it both ways, classify its test set through ORT."""
    trainer = _sample_module(SAMPLES / "encoder" / "train_and_export.py")
    task = sys.modules["task"]
    say(f"training the sample encoder ({steps} steps)")
    model = trainer.train(steps, seed)
    tokens, mask, labels = task.make_dataset(1000, seed=seed + 1)
    torch_accuracy = trainer.accuracy(model, tokens, mask, labels)
    exports = _export_all(model, work / "encoder", say)
    batch = 32

    def classify(session: Session) -> np.ndarray:
        predictions = []
        for i in range(0, len(tokens), batch):
            length = int((~mask[i : i + batch]).sum(1).max())  # trim padding, as serve.py does
            out = session.run(
                tokens=tokens[i : i + batch, :length], key_padding_mask=mask[i : i + batch, :length]
            )
            predictions.append(out["logits"].argmax(-1))
        return np.concatenate(predictions)

    predictions, calls = {}, {}
    for variant, facts in exports.items():
        session = _session(facts["dir"])
        predictions[variant] = classify(session)
        facts["accuracy"] = float((predictions[variant] == labels).mean())
        calls[variant] = lambda s=session: classify(s)
        del facts["dir"]
    # Alternating, so that a slow phase of the shared machine hits float32 and int8 alike.
    for variant, ms in interleaved_median_ms(calls, 6, burst=1).items():
        exports[variant]["test_set_ms"] = ms
    for variant in VARIANTS:
        exports[variant]["predictions_changed"] = int(
            (predictions[FLOAT] != predictions[variant]).sum()
        )
    return {"torch_accuracy": torch_accuracy, "test_sequences": len(labels), **exports}


def _nats_per_char(session: Session, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of ``targets`` under the graph's logits for ``inputs``, (W, L) each."""
    logits = session.run(tokens=inputs, **session.initial_state(len(inputs)))["logits"]
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float((log_z - picked).mean())


def char_lm_report(work: Path, say) -> dict:
    """Export the shipped char-LM both ways; score its validation text through ORT."""
    trainer = _sample_module(SAMPLES / "char_lm" / "train.py")
    checkpoint = SAMPLES / "char_lm" / "char_lm.pt"
    vocab = trainer.read_vocab(SAMPLES / "char_lm" / trainer.VOCAB_NAME)
    text = trainer.CORPUS.read_text(encoding="ascii")
    _, val_ids = trainer.split(trainer.encode(text, vocab))
    seq_len = trainer.TrainConfig().seq_len
    count = (len(val_ids) - 1) // seq_len  # train.evaluate's windows: every char scored once
    windows = val_ids[: count * seq_len + 1].numpy()
    inputs, targets = windows[:-1].reshape(count, seq_len), windows[1:].reshape(count, seq_len)
    torch_nats = trainer.evaluate(load_model(checkpoint).module, val_ids, seq_len)
    exports = _export_all(checkpoint, work / "char_lm", say)
    calls = {}
    for variant, facts in exports.items():
        session = _session(facts["dir"])
        facts["nats_per_char"] = _nats_per_char(session, inputs, targets)
        prefill = {"tokens": inputs[:1], **session.initial_state(1)}
        step = {"tokens": inputs[:1, :1], **session.initial_state(1)}
        calls[variant, "prefill_256_ms"] = lambda s=session, f=prefill: s.run(f)
        calls[variant, "decode_step_ms"] = lambda s=session, f=step: s.run(f)
        del facts["dir"]
    for (variant, key), ms in interleaved_median_ms(calls, 200).items():
        exports[variant][key] = ms
    return {"torch_nats_per_char": torch_nats, "val_chars": int(targets.size), **exports}


def _budget(facts: dict) -> str:
    if facts["budget_passed"] is None:
        return "reference"
    return "pass" if facts["budget_passed"] else "**FAIL**"


def _worst_logits(facts: dict) -> str:
    rows = [r for r in facts["budget_rows"] if r["output"] == "logits" and "kl" in r]
    if not rows:
        return ""
    return f"{max(r['kl'] for r in rows):.2g} / {min(r['top1'] for r in rows):.1%}"


def _worst_rel_rms(facts: dict) -> str:
    values = [r["rel_rms"] for r in facts["budget_rows"]]
    return f"{max(values):.3g}" if values else ""


def _vs_float(
    sample: dict, name: str, key: str, spec: str, *, scale: float = 1.0, unit: str = ""
) -> str:
    """``12.3 (x0.81)``: graph ``name``'s figure (divided by ``scale``, followed by ``unit``)
    and its ratio to the float32 graph's."""
    value, reference = sample[name][key], sample[FLOAT][key]
    return f"{value / scale:{spec}}{unit} (x{value / reference:.2f})"


def _size(sample: dict, name: str) -> str:
    """``123 KiB (x0.31)``: file size and its ratio to the float32 graph's."""
    return _vs_float(sample, name, "bytes", ".0f", scale=1024, unit=" KiB")


ENCODER_HEADER = (
    "graph",
    "budget",
    "worst rel RMS",
    "accuracy",
    "predictions changed",
    "size",
    "test set ms",
)
CHAR_LM_HEADER = (
    "graph",
    "budget",
    "logits KL / top-1",
    "worst rel RMS",
    "nats/char",
    "perplexity",
    "size",
    "prefill 256 ms",
    "decode step ms",
)


def _encoder_row(enc: dict, name: str) -> list[str]:
    e = enc[name]
    return [
        name,
        _budget(e),
        _worst_rel_rms(e),
        f"{e['accuracy']:.3f}",
        str(e["predictions_changed"]),
        _size(enc, name),
        _vs_float(enc, name, "test_set_ms", ".0f"),
    ]


def _char_lm_row(lm: dict, name: str) -> list[str]:
    e = lm[name]
    return [
        name,
        _budget(e),
        _worst_logits(e),
        _worst_rel_rms(e),
        f"{e['nats_per_char']:.4f}",
        f"{math.exp(e['nats_per_char']):.3f}",
        _size(lm, name),
        _vs_float(lm, name, "prefill_256_ms", ".2f"),
        _vs_float(lm, name, "decode_step_ms", ".3f"),
    ]


def render(results: dict) -> str:
    """The markdown report: one table per sample, a row per graph (float32, each int8 scheme)."""
    env, enc, lm = results["environment"], results["encoder"], results["char_lm"]
    features = ", ".join(env["cpu_features"]) or "none of " + ", ".join(INT8_FEATURES)
    encoder_rows = [_encoder_row(enc, name) for name in VARIANTS]
    char_lm_rows = [_char_lm_row(lm, name) for name in VARIANTS]
    lines = [
        f"# int8 quantization, {env['date']}",
        "",
        f"{env['cpu']}, {env['cores']} cores; CPU features: {features}; torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; one intra-op thread. Every int8 scheme is dynamic "
        "(activations uint8 per call) with the attention core float; the schemes are "
        "`favor-export --int8-scheme`, the first one the default. Budget: the int8 parity budget "
        "(`exporter/quant_budget.py`) over favor-export's validation sweep, on this CPU; worst "
        "figures over the sweep. Ratios are to float32, timed in one interleaved run.",
        "",
        f"## Sample encoder ({enc['test_sequences']} test sequences; PyTorch accuracy "
        f"{enc['torch_accuracy']:.3f})",
        "",
        markdown_table(ENCODER_HEADER, encoder_rows, "llrrrrr"),
        "",
        f"## Sample char-LM (validation: {lm['val_chars']} characters; PyTorch "
        f"{lm['torch_nats_per_char']:.4f} nats/char)",
        "",
        markdown_table(CHAR_LM_HEADER, char_lm_rows, "llrrrrrrr"),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-steps", type=int, default=150, help="as train_and_export.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    def say(message: str) -> None:
        print(f"quantize: {message}", file=sys.stderr, flush=True)

    machine = machine_info()
    environment = {"date": time.strftime("%Y-%m-%d")}
    for key in ("cpu", "cpu_features", "cores", "torch", "onnxruntime"):
        environment[key] = machine[key]
    results: dict = {"environment": environment}
    with tempfile.TemporaryDirectory(prefix="favor-quantize-bench-") as tmp:
        results["encoder"] = encoder_report(args.encoder_steps, args.seed, Path(tmp), say)
        results["char_lm"] = char_lm_report(Path(tmp), say)
    text = render(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize.md").write_text(text, encoding="utf-8")
    write_json(args.out / "quantize.json", results)


if __name__ == "__main__":
    main()
