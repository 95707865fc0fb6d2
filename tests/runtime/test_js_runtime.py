"""The JavaScript runtime (runtime/js/favor-runtime.mjs) against favor.runtime.

This module computes what the JavaScript runtime must reproduce, with the Python runtime and
numpy: greedy ids, logits, error messages, sampling distributions, float16 values. It writes
them to a JSON file and runs node's test runner once on tests/node/runtime/, which reads the
file named by FAVOR_JS_CASES and runs the runtime on onnxruntime-node, and on onnxruntime-web's
wasm backend as pages run it. The tests here check that node passed, ran tests, and skipped
none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from favor.exporter import export
from favor.runtime import Generator, ManifestError, Session

ROOT = Path(__file__).resolve().parents[2]
NODE_TESTS = ROOT / "tests" / "node"
SAMPLE = ROOT / "samples" / "char_lm"
VOCAB: list[str] = json.loads((SAMPLE / "vocab.json").read_text())
NODE_TIMEOUT_S = 600
MASK64 = (1 << 64) - 1


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "needs node on PATH"
    absent = [
        package
        for package in ("onnxruntime-node", "onnxruntime-web")
        if not (NODE_TESTS / "node_modules" / package).is_dir()
    ]
    if absent:
        return f"needs {' and '.join(absent)} in tests/node (npm ci --ignore-scripts there)"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# --- exports and copies ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm16_dir(tiny_lm, tmp_path_factory):
    """The tiny LM exported in float16: its logits come out as float16."""
    out = tmp_path_factory.mktemp("js-lm16")
    export(tiny_lm, out, name="lm16", dtype="float16", formats="onnx")
    return out


def _edit(directory: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite the manifest in ``directory`` as ``edit`` changes it (it is not a hashed file)."""
    path = next(directory.glob("*.manifest.json"))
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _copy(source: Path, target: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of the export in ``source`` at ``target``, its manifest changed by ``edit``."""
    shutil.copytree(source, target)
    if edit is not None:
        _edit(target, edit)
    return target


def _file_entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"path": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _with_text(target: Path, kind: str, content: bytes, file_name: str) -> Path:
    """``target``'s export given a text entry of ``kind`` whose file holds ``content``."""
    (target / file_name).write_bytes(content)
    entry = _file_entry(target / file_name)

    def add_text(manifest: dict) -> None:
        manifest["text"] = {"kind": kind}
        manifest["files"]["text"] = entry

    _edit(target, add_text)
    return target


def _without_text(manifest: dict) -> None:
    manifest.pop("text", None)
    manifest["files"].pop("text", None)


# --- what the Python runtime computes ----------------------------------------------------------


def _encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


def _corpus_ids(start: int, length: int) -> list[int]:
    text = (SAMPLE / "corpus.txt").read_text()
    return _encode(text[start : start + length])


def _greedy(session: Session, prompts: list[tuple[list[int], int]]) -> list[dict]:
    """Python's greedy ids for each ``(prompt, new tokens)``."""
    return [
        {
            "id": f"prompt {len(prompt)}, {new} new",
            "prompt": prompt,
            "new": new,
            "ids": Generator(session).generate(prompt, new),
        }
        for prompt, new in prompts
    ]


# Prompt lengths around the sample LM's chunk size (64), and how many tokens follow each.
GREEDY_LENGTHS = [(1, 40), (4, 1), (63, 17), (64, 5), (65, 33), (200, 20)]
FP16_PROMPTS = [([3, 1, 4, 1, 5, 9, 2, 6], 20), ([7], 15), (list(range(30)), 12)]


def _window_case(session: Session) -> dict:
    prompt = _corpus_ids(300, 40)
    ids = Generator(session).generate(prompt, 30, window=32)
    return {"prompt": prompt, "new": 30, "window": 32, "ids": ids}


def _long_case(session: Session) -> dict:
    """A 1000-token prompt: the last logits of one call over all of it, and greedy ids."""
    prompt = _corpus_ids(2000, 1000)
    out = session.run(tokens=np.array([prompt], np.int64), **session.initial_state(1))
    return {
        "prompt": prompt,
        "logits": out["logits"][0, -1].tolist(),
        "new": 20,
        "ids": Generator(session).generate(prompt, 20),
    }


def _described(array: np.ndarray) -> dict:
    """An array as the case file holds a tensor: dtype, shape, row-major values."""
    values = array.astype(np.float64) if array.dtype == np.float16 else array
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "values": values.ravel().tolist(),
    }


def _run_case(session: Session, name: str, batch: int, calls: list[dict]) -> dict:
    """``calls`` run in turn from the zero state, each call's state fed to the next, and the
    outputs Python's Session.run gives for each."""
    state = session.initial_state(batch)
    done = []
    for feeds in calls:
        out = session.run({**state, **feeds})
        state = {inp: out[output] for inp, output in session.state}
        done.append(
            {
                "feeds": {k: _described(v) for k, v in feeds.items()},
                "outputs": {k: _described(v) for k, v in out.items()},
            }
        )
    return {"id": name, "model": name, "batch": batch, "calls": done}


def _run_cases(sessions: dict[str, Session]) -> list[dict]:
    rng = np.random.default_rng(7)

    def tokens(low: int, high: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(low, high, shape, dtype=np.int64)

    mask = np.zeros((2, 9), bool)
    mask[1, 6:] = True  # the second sequence is padded after 6 tokens
    return [
        _run_case(
            sessions["char_lm"], "char_lm", 2,
            [{"tokens": tokens(0, 59, (2, 70))}, {"tokens": tokens(0, 59, (2, 1))}],
        ),
        _run_case(
            sessions["lm16"], "lm16", 2,
            [{"tokens": tokens(0, 30, (2, 5))}, {"tokens": tokens(0, 30, (2, 1))}],
        ),
        _run_case(
            sessions["encoder"], "encoder", 2,
            [{"tokens": tokens(0, 30, (2, 9)), "key_padding_mask": mask}],
        ),
        _run_case(
            sessions["module"], "module", 3,
            [{"x": rng.standard_normal((3, 4)).astype(np.float32)}],
        ),
    ]  # fmt: skip


def _distribution(
    logits: list[float], temperature: float, top_k: int | None = None, top_p: float | None = None
) -> list[float]:
    """What sampling must draw with, from the definitions: softmax(logits / temperature), kept
    to the ``top_k`` largest, then to the fewest most likely tokens holding ``top_p``."""
    probs = np.exp(np.asarray(logits) / temperature)
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = len(probs) if top_k is None else top_k
    if top_p is not None:
        within = probs[order[:keep]] / probs[order[:keep]].sum()
        keep = int(np.argmax(np.cumsum(within) >= top_p)) + 1
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return (kept / kept.sum()).tolist()


def _sampler_cases() -> list[dict]:
    logits = [1.0, -0.5, 2.0, 0.3, -1.2, 1.6, 0.0, -3.0]
    chosen = [
        ("temperature 1", {"temperature": 1.0}),
        ("temperature 0.5", {"temperature": 0.5}),
        ("temperature 2, top-k 3", {"temperature": 2.0, "topK": 3}),
        ("temperature 1, top-p 0.8", {"temperature": 1.0, "topP": 0.8}),
        ("temperature 1.5, top-k 5, top-p 0.9", {"temperature": 1.5, "topK": 5, "topP": 0.9}),
    ]
    return [
        {
            "id": name,
            "logits": logits,
            "options": options,
            "probs": _distribution(
                logits, options["temperature"], options.get("topK"), options.get("topP")
            ),
        }
        for name, options in chosen
    ]


def _splitmix64(seed: int, count: int) -> list[int]:
    """The first ``count`` outputs of SplitMix64 from ``seed``, in plain integer arithmetic."""
    outputs, state = [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        outputs.append(z ^ (z >> 31))
    return outputs


def _rng_cases() -> list[dict]:
    cases = []
    for seed in (0, 1234567, MASK64):
        outputs = _splitmix64(seed, 5)
        uniforms = [(z >> 11) / 2**53 for z in outputs]
        cases.append(
            {"seed": str(seed), "outputs": [str(z) for z in outputs], "uniforms": uniforms}
        )
    return cases


def _float16_table() -> list[float | str]:
    """numpy's value of every float16 bit pattern, index = bits; non-finite ones by name."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    return [v if np.isfinite(v) else str(v) for v in values.tolist()]


# --- errors, as the Python runtime words them --------------------------------------------------

# Each changes a valid set of feeds (tokens (1, 3) and the zero state) in one way.
FEED_ERRORS = {
    "unknown input": ("char_lm", {"add": "bogus"}),
    "missing input": ("char_lm", {"drop": "state.1"}),
    "float tokens": ("char_lm", {"set": "tokens", "dtype": "float32", "shape": [1, 3]}),
    "int32 tokens": ("char_lm", {"set": "tokens", "dtype": "int32", "shape": [1, 3]}),
    "rank 1 tokens": ("char_lm", {"set": "tokens", "dtype": "int64", "shape": [3]}),
    "rank 3 tokens": ("char_lm", {"set": "tokens", "dtype": "int64", "shape": [1, 3, 1]}),
    "fixed dim": ("char_lm", {"set": "state.0", "dtype": "float32", "shape": [1, 4, 64, 32]}),
    "batch mismatch": ("char_lm", {"set": "tokens", "dtype": "int64", "shape": [2, 3]}),
    "empty sequence": ("char_lm", {"set": "tokens", "dtype": "int64", "shape": [1, 0]}),
    "id past the vocabulary": (
        "char_lm", {"set": "tokens", "dtype": "int64", "shape": [1, 3], "values": [1, 99, 59]},
    ),
    "negative id": (
        "char_lm", {"set": "tokens", "dtype": "int64", "shape": [1, 2], "values": [5, -1]},
    ),
    "float mask": ("encoder", {"set": "key_padding_mask", "dtype": "float32", "shape": [1, 3]}),
    "encoder id past the vocabulary": (
        "encoder", {"set": "tokens", "dtype": "int64", "shape": [1, 3], "values": [0, 30, 1]},
    ),
}  # fmt: skip


def _base_feeds(session: Session) -> dict[str, np.ndarray]:
    feeds = {"tokens": np.array([[1, 2, 3]], np.int64), **session.initial_state(1)}
    if session.kind == "encoder":
        feeds["key_padding_mask"] = np.zeros((1, 3), bool)
    return feeds


def _changed(feeds: dict[str, np.ndarray], change: dict) -> dict[str, np.ndarray]:
    feeds = dict(feeds)
    if "add" in change:
        feeds[change["add"]] = np.zeros(1, np.int64)
    elif "drop" in change:
        del feeds[change["drop"]]
    else:
        values = change.get("values")
        array = np.zeros(change["shape"]) if values is None else np.array(values)
        feeds[change["set"]] = array.reshape(change["shape"]).astype(change["dtype"])
    return feeds


def _message(call: Callable[[], object], error: type[Exception] = ValueError) -> str:
    with pytest.raises(error) as raised:
        call()
    return str(raised.value)


def _feed_errors(sessions: dict[str, Session]) -> list[dict]:
    cases = []
    for name, (model, change) in FEED_ERRORS.items():
        session = sessions[model]
        feeds = _changed(_base_feeds(session), change)
        message = _message(lambda s=session, f=feeds: s.check_inputs(f))
        cases.append({"id": name, "model": model, "change": change, "message": message})
    return cases


# Python's argument names as the JavaScript runtime spells them.
JS_NAMES = {
    "prompt_ids": "promptIds",
    "max_new_tokens": "maxNewTokens",
    "prefill_chunk": "prefillChunk",
    "top_k": "topK",
    "top_p": "topP",
    "None": "undefined",
}
PY_OPTIONS = {"temperature": "temperature", "topK": "top_k", "topP": "top_p", "window": "window"}

# (model, call, arguments in JavaScript's terms).
GENERATOR_ERRORS = {
    "encoder in a Generator": ("encoder", "construct", {}),
    "module in a Generator": ("module", "construct", {}),
    "prefill chunk 0": ("char_lm", "construct", {"prefillChunk": 0}),
    "prompt id past the vocabulary": ("char_lm", "generate", {"prompt": [1, 99], "new": 3}),
    "negative prompt id": ("char_lm", "generate", {"prompt": [-1, 2], "new": 3}),
    "empty prompt": ("char_lm", "generate", {"prompt": [], "new": 3}),
    "negative max new tokens": ("char_lm", "generate", {"prompt": [1], "new": -1}),
    "fractional max new tokens": ("char_lm", "generate", {"prompt": [1], "new": 2.5}),
    "negative temperature": ("char_lm", "generate", {"prompt": [1], "new": 3, "temperature": -1}),
    "top-k 0": ("char_lm", "generate", {"prompt": [1], "new": 3, "topK": 0}),
    "fractional top-k": ("char_lm", "generate", {"prompt": [1], "new": 3, "topK": 2.5}),
    "top-p 0": ("char_lm", "generate", {"prompt": [1], "new": 3, "topP": 0}),
    "top-p above 1": ("char_lm", "generate", {"prompt": [1], "new": 3, "topP": 1.5}),
    "window 1": ("char_lm", "generate", {"prompt": [1], "new": 3, "window": 1}),
    "prefill of nothing": ("char_lm", "prefill", {"tokens": []}),
    "prefill id past the vocabulary": ("char_lm", "prefill", {"tokens": [4, 59]}),
    "step id past the vocabulary": ("char_lm", "step", {"token": 59}),
    "past max_sequence_length": ("lm_max10", "prefill", {"tokens": list(range(11))}),
}


def _generator_call(session: Session, call: str, args: dict) -> Callable[[], object]:
    if call == "construct":
        return lambda: Generator(session, prefill_chunk=args.get("prefillChunk", 4096))
    if call == "prefill":
        return lambda: Generator(session).prefill(args["tokens"])
    if call == "step":
        return lambda: Generator(session).step(args["token"])
    options = {PY_OPTIONS[k]: v for k, v in args.items() if k in PY_OPTIONS}
    return lambda: Generator(session).generate(args["prompt"], args["new"], **options)


def _in_js_terms(message: str) -> str:
    for python, js in JS_NAMES.items():
        message = re.sub(rf"\b{python}\b", js, message)
    return message


def _generator_errors(sessions: dict[str, Session]) -> list[dict]:
    cases = []
    for name, (model, call, args) in GENERATOR_ERRORS.items():
        message = _message(_generator_call(sessions[model], call, args))
        cases.append(
            {
                "id": name,
                "model": model,
                "call": call,
                "args": args,
                "message": _in_js_terms(message),
            }
        )
    return cases


def _manifest_copies(lm_dir: Path, root: Path) -> dict[str, tuple[Path, str | None]]:
    """Broken copies of the tiny LM export: {case: (directory, export name to ask for)}."""
    copies: dict[str, tuple[Path, str | None]] = {}

    def edited(case: str, edit: Callable[[dict], None], name: str | None = None) -> Path:
        copies[case] = (_copy(lm_dir, root / case.replace(" ", "-"), edit), name)
        return copies[case][0]

    def set_entry(*keys: str, value: object) -> Callable[[dict], None]:
        def edit(manifest: dict) -> None:
            parent = manifest
            for key in keys[:-1]:
                parent = parent[int(key)] if isinstance(parent, list) else parent[key]
            parent[keys[-1]] = value

        return edit

    edited("format version 2", set_entry("format_version", value=2))
    edited("another format", set_entry("format", value="onnx-manifest"))
    edited("unknown kind", set_entry("kind", value="decoder"))
    edited("state from no input", lambda m: m["state"][0].update(input="nope"))
    edited("input listed twice", lambda m: m["inputs"][1].update(name=m["inputs"][0]["name"]))
    edited("bad dtype", lambda m: m["inputs"][0].update(dtype="float8"))
    edited("zero dim", lambda m: m["inputs"][2]["shape"].__setitem__(1, 0))
    edited("malformed sha256", set_entry("files", "onnx", "sha256", value="abc"))
    edited("no onnx file", set_entry("files", value={}))
    edited("path with ..", set_entry("files", "onnx", "path", value="../lm.onnx"))
    edited("absolute path", set_entry("files", "onnx", "path", value=str(lm_dir / "lm.onnx")))
    edited("renamed input", lambda m: m["inputs"][0].update(name="ids"))
    edited("text without its file", set_entry("text", value={"kind": "characters"}))
    altered = edited("altered onnx", None)
    with open(altered / "lm.onnx", "ab") as handle:
        handle.write(b"\0")
    (edited("missing onnx", None) / "lm.onnx").unlink()
    linked = edited("link out of the export", None)
    (linked / "lm.onnx").unlink()
    (linked / "lm.onnx").symlink_to(lm_dir / "lm.onnx")
    several = edited("several exports", None)
    shutil.copy(several / "lm.manifest.json", several / "lm2.manifest.json")
    edited("unknown name", None, name="nope")
    (root / "empty").mkdir()
    copies["no manifest"] = (root / "empty", None)
    return copies


def _manifest_errors(lm_dir: Path, root: Path) -> list[dict]:
    cases = []
    for name, (directory, export_name) in _manifest_copies(lm_dir, root).items():
        message = _message(lambda d=directory, n=export_name: Session(d, name=n), ManifestError)
        cases.append({"id": name, "dir": str(directory), "name": export_name, "message": message})
    return cases


# Character vocabularies a text entry may not hold, each as JSON.
BAD_VOCABULARIES = {
    "a long entry": ["a", "bc"],
    "a repeat": ["a", "b", "a", "b", "c"],
    "a number": ["a", 1],
    "nothing": [],
}
OUTSIDE_VOCABULARY = "Tea \u20ac \u00fc \u20ac"  # the euro sign and u-umlaut are not in it


def _text_errors(char_lm_dir: Path, root: Path) -> list[dict]:
    cases = []
    for name, content in BAD_VOCABULARIES.items():
        target = _copy(char_lm_dir, root / name.replace(" ", "-") / "char_lm", _without_text)
        _with_text(target, "characters", json.dumps(content).encode(), "char_lm.vocab.json")
        message = _message(lambda d=target: Session(d).text, ManifestError)
        cases.append({"id": name, "dir": str(target), "message": message})
    return cases


# --- the case file and the node run ------------------------------------------------------------


@pytest.fixture(scope="module")
def cases_file(char_lm_dir, lm_dir, lm16_dir, encoder_dir, module_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("js-runtime")
    vocab = (SAMPLE / "vocab.json").read_bytes()
    dirs = {
        "char_lm": _with_text(
            _copy(char_lm_dir, root / "char_lm", _without_text), "characters", vocab,
            "char_lm.vocab.json",
        ),
        "textless": _copy(char_lm_dir, root / "textless" / "char_lm", _without_text),
        "tokenizer": _with_text(
            _copy(char_lm_dir, root / "tokenizer" / "char_lm", _without_text), "tokenizer.json",
            b'{"model": {}}', "char_lm.tokenizer.json",
        ),
        "altered_text": _with_text(
            _copy(char_lm_dir, root / "altered" / "char_lm", _without_text), "characters", vocab,
            "char_lm.vocab.json",
        ),
        "lm": lm_dir,
        "lm16": lm16_dir,
        "encoder": encoder_dir,
        "module": module_dir,
        "lm_max10": _copy(lm_dir, root / "lm_max10", lambda m: m.update(max_sequence_length=10)),
    }  # fmt: skip
    (dirs["altered_text"] / "char_lm.vocab.json").write_bytes(vocab.replace(b", ", b","))
    sessions = {
        name: Session(dirs[name], providers="cpu", threads=1)
        for name in ("char_lm", "lm16", "encoder", "module", "lm_max10")
    }
    char_lm = sessions["char_lm"]
    cases = {
        "root": str(root),
        "dirs": {name: str(path) for name, path in dirs.items()},
        "vocab": VOCAB,
        "greedy": _greedy(
            char_lm, [(_corpus_ids(1000 + 7 * n, n), new) for n, new in GREEDY_LENGTHS]
        ),
        "window": _window_case(char_lm),
        "long": _long_case(char_lm),
        "run": _run_cases(sessions),
        "fp16": _greedy(sessions["lm16"], FP16_PROMPTS),
        "sampler": _sampler_cases(),
        "rng": _rng_cases(),
        "float16": _float16_table(),
        "feedErrors": _feed_errors(sessions),
        "generatorErrors": _generator_errors(sessions),
        "manifestErrors": _manifest_errors(lm_dir, root / "manifests"),
        "alteredText": _message(lambda: Session(dirs["altered_text"]), ManifestError),
        "textErrors": _text_errors(char_lm_dir, root / "vocabularies"),
        "outsideVocabulary": {
            "text": OUTSIDE_VOCABULARY,
            "message": _message(lambda: char_lm.text.encode(OUTSIDE_VOCABULARY)),
        },
    }
    path = root / "cases.json"
    path.write_text(json.dumps(cases))
    return path


@pytest.fixture(scope="module")
def node_run(cases_file) -> subprocess.CompletedProcess:
    files = sorted(str(p.relative_to(ROOT)) for p in (NODE_TESTS / "runtime").glob("*.test.mjs"))
    return subprocess.run(
        ["node", "--test", "--test-reporter=tap", *files],
        cwd=ROOT, env={**os.environ, "FAVOR_JS_CASES": str(cases_file)},
        capture_output=True, text=True, timeout=NODE_TIMEOUT_S,
    )  # fmt: skip


def _summary(tap: str) -> dict[str, int]:
    """The counts node's TAP reporter ends with: ``# pass 12`` and the like."""
    return {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)$", tap, re.MULTILINE)}


def test_the_javascript_runtime_passes_its_node_tests(node_run):
    failed = re.findall(r"^\s*not ok \d+ - (.*)$", node_run.stdout, re.MULTILINE)
    assert node_run.returncode == 0, (
        f"node --test exited {node_run.returncode}; failed: {failed}\n"
        f"{node_run.stdout[-6000:]}\n{node_run.stderr[-2000:]}"
    )


def test_node_ran_tests_and_skipped_none(node_run):
    summary = _summary(node_run.stdout)
    assert summary.get("pass", 0) > 0, node_run.stdout[-2000:]
    assert summary.get("tests") == summary["pass"], summary
    for outcome in ("fail", "cancelled", "skipped", "todo"):
        assert summary.get(outcome) == 0, summary


def test_the_reference_splitmix64_gives_the_published_outputs():
    # The reference values for seed 1234567 (Rosetta Code, "Pseudo-random numbers/Splitmix64").
    assert _splitmix64(1234567, 3) == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
    ]
