"""``--quantize int8`` on the sample models' real outputs: accuracy, perplexity, size, latency.

    python -m benchmarks.quantize [--encoder-steps 150] [--out benchmarks/results]

- The sample encoder (``samples/encoder``) is trained from scratch (about 30 s on 2 cores),
  exported float32 and ``--quantize int8``, and both graphs classify its 1000-sequence test set
  through ``favor.runtime``: accuracy drop, file size, time for the whole test set.
- The shipped char-LM (``samples/char_lm/char_lm.pt``) is exported both ways, and both graphs
  score the held-out last 10% of ``corpus.txt`` in consecutive 256-character windows, as
  ``samples/char_lm/train.py`` defines its validation loss: nats per character and perplexity,
  file size, prefill and decode latency.

The int8 exports are validated (their parity budget included) as ``favor-export`` would. Every
session runs on the CPU with one intra-op thread, so the latency ratio compares kernels rather
than thread scheduling. Prints a markdown table; writes ``quantize.md`` and ``quantize.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.machine import cpu_model
from benchmarks.timing import interleaved_median_ms
from favor.exporter import export, load_model
from favor.runtime import Session

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
VARIANTS = ("float32", "int8")
BUDGET_BACKEND = "onnxruntime-cpu int8"  # validation's label for the int8 graph


def _sample_module(path: Path) -> ModuleType:
    """Import a sample script by path: the samples are scripts, not an installed package."""
    sys.path.insert(0, str(path.parent))  # they import their siblings (task.py)
    spec = importlib.util.spec_from_file_location(f"favor_sample_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _export_both(model: object, out: Path, say) -> dict[str, dict]:
    """Export ``model`` float32 and int8 (ONNX only) into ``out``; return both exports' facts."""
    exports = {}
    for variant in VARIANTS:
        say(f"exporting {variant}")
        start = time.perf_counter()
        quantized = variant == "int8"
        # The float32 graph's parity is the exporter tests' business; the int8 one is validated
        # here because its budget is what this benchmark reports on.
        result = export(
            model, out / variant, formats="onnx", name="model",
            quantize="int8" if quantized else None, validate_outputs=quantized,
        )  # fmt: skip
        exports[variant] = {
            "dir": result.output_dir,
            "bytes": result.onnx_path.stat().st_size,
            "export_s": time.perf_counter() - start,
            "budget_rows": [r for r in result.report.rows() if "rel_rms" in r]
            if result.report
            else [],
            "quantization": result.manifest.get("quantization"),
        }
    return exports


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
    exports = _export_both(model, work / "encoder", say)
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
    changed = int((predictions["float32"] != predictions["int8"]).sum())
    return {
        "torch_accuracy": torch_accuracy,
        "test_sequences": len(labels),
        "predictions_changed": changed,
        **exports,
    }


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
    exports = _export_both(checkpoint, work / "char_lm", say)
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


def _worst(rows: list[dict], key: str, output: str = "logits") -> float:
    values = [r[key] for r in rows if r["output"] == output and key in r]
    return (min if key == "top1" else max)(values) if values else math.nan


def render(results: dict) -> str:
    """The markdown report: one table per sample, then the int8 graphs' worst budget figures."""
    env, enc, lm = results["environment"], results["encoder"], results["char_lm"]
    f32, i8 = enc["float32"], enc["int8"]
    lines = [
        f"# int8 quantization, {env['date']}",
        "",
        f"{env['cpu']}, {env['cores']} cores; torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}; one intra-op thread; int8 = dynamic, int8 weights "
        f"({'per channel' if i8['quantization']['per_channel'] else 'per tensor'}), "
        f"{i8['quantization']['quantized_matmuls']} weight MatMuls, attention core float.",
        "",
        f"## Sample encoder ({enc['test_sequences']} test sequences; PyTorch accuracy "
        f"{enc['torch_accuracy']:.3f})",
        "",
        "| graph | accuracy | size KiB | test set ms |",
        "|---|---:|---:|---:|",
    ]
    for name in VARIANTS:
        e = enc[name]
        lines.append(
            f"| {name} | {e['accuracy']:.3f} | {e['bytes'] / 1024:.0f} | {e['test_set_ms']:.0f} |"
        )
    lines += [
        "",
        f"Accuracy drop {f32['accuracy'] - i8['accuracy']:+.3f} ({enc['predictions_changed']} "
        f"of {enc['test_sequences']} predictions changed); size x"
        f"{i8['bytes'] / f32['bytes']:.2f}; latency x{i8['test_set_ms'] / f32['test_set_ms']:.2f}.",
        "",
        f"## Sample char-LM (validation: {lm['val_chars']} characters; PyTorch "
        f"{lm['torch_nats_per_char']:.4f} nats/char)",
        "",
        "| graph | nats/char | perplexity | size KiB | prefill 256 ms | decode step ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        e = lm[name]
        lines.append(
            f"| {name} | {e['nats_per_char']:.4f} | {math.exp(e['nats_per_char']):.3f} | "
            f"{e['bytes'] / 1024:.0f} | {e['prefill_256_ms']:.2f} | {e['decode_step_ms']:.3f} |"
        )
    f32, i8 = lm["float32"], lm["int8"]
    lines += [
        "",
        f"Change {i8['nats_per_char'] - f32['nats_per_char']:+.4f} nats/char (perplexity "
        f"x{math.exp(i8['nats_per_char'] - f32['nats_per_char']):.4f}); size x"
        f"{i8['bytes'] / f32['bytes']:.2f}; prefill x{i8['prefill_256_ms'] / f32['prefill_256_ms']:.2f}, "
        f"decode x{i8['decode_step_ms'] / f32['decode_step_ms']:.2f}.",
        "",
        "## Parity budget of the int8 graphs (worst over the validation sweep)",
        "",
        "| model | output | rel RMS | KL nats | top-1 (decisive) |",
        "|---|---|---:|---:|---:|",
    ]
    for label, rows in (("encoder", enc["int8"]["budget_rows"]), ("char-LM", i8["budget_rows"])):
        for row in rows:
            kl = f"{row['kl']:.2g}" if "kl" in row else ""
            top1 = f"{row['top1']:.1%}" if "top1" in row else ""
            output = f"{row['backend'].removeprefix(BUDGET_BACKEND)} {row['output']}".strip()
            lines.append(f"| {label} | {output} | {row['rel_rms']:.3g} | {kl} | {top1} |")
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

    results: dict = {
        "environment": {
            "date": time.strftime("%Y-%m-%d"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        }
    }
    with tempfile.TemporaryDirectory(prefix="favor-quantize-bench-") as tmp:
        results["encoder"] = encoder_report(args.encoder_steps, args.seed, Path(tmp), say)
        results["char_lm"] = char_lm_report(Path(tmp), say)
    text = render(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize.md").write_text(text, encoding="utf-8")
    (args.out / "quantize.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
