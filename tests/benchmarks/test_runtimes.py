"""``python -m benchmarks.runtimes`` in a tiny run: every row measured, every figure a positive
finite number, the files written; and the pieces it relies on (the echo export, the token ids
both languages feed). Needs node, Chromium and tests/node's npm packages; skips without them."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import runtimes
from benchmarks.machine import cpu_features, cpu_model
from benchmarks.runtimes_cases import cases
from benchmarks.runtimes_echo import write_echo_export
from benchmarks.runtimes_js import JS_DIR, WASM_DIST, missing
from benchmarks.runtimes_python import token_ids
from favor.runtime import Session

MISSING = missing("browser") or missing("node")
needs_js = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

TINY = [
    "--loads", "2", "--prefill", "16", "--first-steps", "3", "--steps", "10", "--burst", "5",
    "--warmup-ms", "0", "--wasm-warmup-ms", "0", "--patience-s", "0",
]  # fmt: skip
TIMES = ("first_load_ms", "load_ms", "prefill_ms", "cold_step_ms", "step_ms", "tokens_per_s")


@pytest.fixture(scope="module")
def tiny_run(char_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtimes")
    report = runtimes.run(
        runtimes.parse_args([*TINY, "--export", str(char_lm_dir), "--out-dir", str(out)])
    )
    return report, out


@needs_js
def test_every_row_is_measured_with_positive_finite_times(tiny_run):
    report, _ = tiny_run
    want = [case.key for case in cases({"python", "node", "browser"}, probes=True, static=True)]
    assert {"python-static-t1", "python-static-t2"} <= set(want)
    assert [row["key"] for row in report["rows"]] == want
    for row in report["rows"]:
        for key in TIMES:
            assert math.isfinite(row[key]) and row[key] > 0, (row["key"], key, row[key])
        assert [len(burst["step_ms"]) for burst in row["bursts"]] == [5, 5]
        assert len(row["start"]["cold_step_ms"]) == 3


@needs_js
def test_browser_rows_are_isolated_and_use_the_threads_asked(tiny_run):
    report, _ = tiny_run
    pages = {row["threads_requested"]: row for row in report["rows"] if row["runtime"] == "browser"}
    assert set(pages) == {1, 2}
    for asked, row in pages.items():
        assert row["cross_origin_isolated"] is True
        assert row["threads"] == asked


@needs_js
def test_the_markdown_names_the_machine_sizes_and_every_row(tiny_run, char_lm_dir):
    report, out = tiny_run
    text = (out / "runtimes.md").read_text()
    assert cpu_model() in text
    assert all(feature in text for feature in cpu_features())
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(report["rows"])
    onnx_mib = (char_lm_dir / "char_lm.onnx").stat().st_size / (1 << 20)
    wasm_mib = (WASM_DIST / "ort-wasm-simd-threaded.wasm").stat().st_size / (1 << 20)
    assert f"{onnx_mib:.2f} MiB" in text and f"{wasm_mib:.2f} MiB" in text
    written = json.loads((out / "runtimes.json").read_text())
    assert [row["key"] for row in written["rows"]] == [row["key"] for row in report["rows"]]
    assert (out / "runtimes.png").stat().st_size > 0


def test_the_echo_export_passes_state_through_and_logits_are_the_ids(char_lm_dir, tmp_path):
    echo = write_echo_export(char_lm_dir, tmp_path)
    session = Session(echo, "cpu")  # the manifest verifies: its sha256 is the graph's
    rng = np.random.default_rng(0)
    state = {
        k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in session.initial_state(1).items()
    }
    tokens = np.array([[3, 1, 4, 1, 5]])
    outputs = session.run(tokens=tokens, **state)
    np.testing.assert_array_equal(outputs["logits"], tokens[..., None].astype(np.float32))
    for entry in session.manifest.state:
        np.testing.assert_array_equal(outputs[entry.output], state[entry.input])
    plain = ort.InferenceSession(str(echo / "char_lm.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in plain.get_inputs()} == {e.name for e in session.inputs}


@pytest.mark.skipif(missing("node") is not None, reason=missing("node") or "")
def test_node_feeds_the_same_token_ids_as_python():
    script = (
        f"import {{ tokenIds }} from {json.dumps(str(JS_DIR / 'measure.mjs'))};"
        "console.log(JSON.stringify(tokenIds(300, 59, 256)));"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == token_ids(300, 59, 256)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        pytest.param(["--export", "/nonexistent/export"], "no export at /nonexistent/export", id="no-export"),
        pytest.param(["--runtimes", "python,deno"], "python,node,browser", id="bad-runtime"),
        pytest.param(["--burst", "0"], "--burst", id="zero-burst"),
        pytest.param(["--warmup-ms", "-1"], "--warmup-ms", id="negative-warm-up"),
    ],
)  # fmt: skip
def test_bad_options_are_named(argv, named, capsys):
    with pytest.raises(SystemExit):
        runtimes.parse_args(argv)
    assert named in capsys.readouterr().err
