"""The browser demo (samples/web) in headless Chromium, served from the repository root.

The page's greedy ids must equal favor.runtime's, its failures must reach ``#status``, and it
must render. Needs Chromium, tests/node's playwright-core and samples/web's onnxruntime-web
(.ci/run installs all three); without them the tests skip, saying which is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from PIL import Image

from favor.exporter import export
from favor.runtime import Generator, Session
from tests.conftest import SAMPLE_LM

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "node" / "browser" / "drive_page.mjs"
VOCAB = json.loads((ROOT / "samples" / "char_lm" / "vocab.json").read_text())
PAGE = "/samples/web/index.html"
# Where the test's exports are served. The runtime names the manifest after the prefix's last
# segment, so each ends in the export's name.
EXPORT = "/exports/char_lm/"
TEXTLESS_EXPORT = "/textless/char_lm/"
FP16_EXPORT = "/fp16/char_lm/"
PAGE_TIMEOUT_MS = 30_000
# The driver's screenshot size; small enough for docs/images.
SCREEN = (1000, 700)


def _chromium() -> str | None:
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else shutil.which("chromium")


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    needs = {
        "node": shutil.which("node"),
        "chromium (/usr/bin/chromium or on PATH)": _chromium(),
        "tests/node/node_modules/playwright-core (npm ci --ignore-scripts in tests/node)": (
            ROOT / "tests/node/node_modules/playwright-core"
        ).is_dir(),
        "samples/web/node_modules/onnxruntime-web (npm ci --ignore-scripts in samples/web)": (
            ROOT / "samples/web/node_modules/onnxruntime-web"
        ).is_dir(),
    }
    absent = [what for what, found in needs.items() if not found]
    return f"needs {'; '.join(absent)}" if absent else None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


class _Handler(SimpleHTTPRequestHandler):
    """Files under the server's mounts: the longest URL prefix that matches picks the folder."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def translate_path(self, path: str) -> str:
        for prefix, folder in self.server.mounts:
            if path.startswith(prefix):
                self.directory = str(folder)
                return super().translate_path("/" + path[len(prefix) :])
        raise AssertionError(f"no mount serves {path}")  # "/" is always mounted

    def end_headers(self) -> None:
        if self.server.isolated:
            # Cross-origin isolation: the page may then use SharedArrayBuffer, wasm's threads.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(mounts: dict[str, Path], *, isolated: bool) -> Iterator[str]:
    """Serve ``mounts`` (URL prefix -> folder, "/" included) on 127.0.0.1; yield the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))
    server.isolated = isolated
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def textless_dir(char_lm_dir, tmp_path_factory):
    """The sample export with no text entry in its manifest: the page needs its vocab parameter."""
    target = tmp_path_factory.mktemp("web-textless") / "char_lm"
    shutil.copytree(char_lm_dir, target)
    path = target / "char_lm.manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("text", None)
    manifest["files"].pop("text", None)
    path.write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    """The sample LM with float16 weights and logits, which the page must decode as numbers.

    Unvalidated (tests/exporter validates fp16 exports): here the browser is compared with
    favor.runtime on the same files.
    """
    target = tmp_path_factory.mktemp("web-fp16") / "char_lm"
    export(SAMPLE_LM, target, formats="onnx", dtype="float16", validate_outputs=False)
    return target


@pytest.fixture(scope="module")
def mounts(char_lm_dir, textless_dir, fp16_dir):
    return {"/": ROOT, EXPORT: char_lm_dir, TEXTLESS_EXPORT: textless_dir, FP16_EXPORT: fp16_dir}


@pytest.fixture(scope="module")
def site(mounts):
    yield from _serve(mounts, isolated=False)


@pytest.fixture(scope="module")
def isolated_site(mounts):
    yield from _serve(mounts, isolated=True)


def _drive(url: str, screenshot: Path) -> dict:
    """The driver's report on the page at ``url`` (see drive_page.mjs)."""
    done = subprocess.run(
        ["node", str(DRIVER), url, "--screenshot", str(screenshot), "--chromium", _chromium(),
         "--timeout", str(PAGE_TIMEOUT_MS), "--width", str(SCREEN[0]), "--height", str(SCREEN[1])],
        capture_output=True, text=True, timeout=PAGE_TIMEOUT_MS / 1000 + 60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.strip()
    report = json.loads(done.stdout)
    assert not report["timedOut"], f"the page never finished; #status reads {report['status']!r}"
    return report


def _python_greedy(export_dir: Path, prompt: str, n: int) -> list[int]:
    ids = [VOCAB.index(c) for c in prompt]
    return Generator(Session(export_dir)).generate(ids, n)


def _assert_rendered(screenshot: Path) -> None:
    image = Image.open(screenshot).convert("RGB")
    assert image.size == SCREEN
    pixels = np.asarray(image, dtype=np.float64)
    colours = image.getcolors(maxcolors=SCREEN[0] * SCREEN[1])
    # Text, buttons and borders antialiased on a light page: hundreds of shades; a blank or
    # failed render has one or two.
    assert len(colours) > 50, f"the screenshot has {len(colours)} colours: nothing rendered"
    assert pixels.std() > 10, f"the screenshot is nearly flat (std {pixels.std():.1f})"


def _page(base: str, **params: str | int) -> str:
    """The demo's URL on ``base`` with ``params`` (plain text; encoded here)."""
    return f"{base}{PAGE}?{urlencode(params, quote_via=quote, safe='/')}"


@pytest.mark.parametrize(
    ("export", "extra", "prompt"),
    [
        pytest.param(EXPORT, {}, "The ", id="manifest-text"),
        pytest.param(
            TEXTLESS_EXPORT,
            {"vocab": "/samples/char_lm/vocab.json"},
            "A fox\nsaid",
            id="vocab-parameter",
        ),
    ],
)
def test_greedy_ids_equal_the_python_runtime(site, char_lm_dir, export, extra, prompt, tmp_path):
    n = 20
    report = _drive(
        _page(site, model=export, prompt=prompt, n=n, greedy=1, **extra),
        tmp_path / "page.png",
    )
    assert report["status"] == "done"
    want = _python_greedy(char_lm_dir, prompt, n)
    assert report["ids"] == want
    assert report["text"] == "".join(VOCAB[i] for i in want)
    assert report["consoleErrors"] == [] and report["pageErrors"] == []
    assert report["stats"]["threads"] == 1 and report["stats"]["tokens_per_s"] > 0
    _assert_rendered(tmp_path / "page.png")


def test_float16_logits_give_the_python_runtimes_greedy_ids(site, fp16_dir, tmp_path):
    assert Session(fp16_dir).manifest.output("logits").dtype == "float16"
    report = _drive(
        _page(site, model=FP16_EXPORT, prompt="The ", n=30, greedy=1), tmp_path / "p.png"
    )
    assert report["status"] == "done"
    assert report["ids"] == _python_greedy(fp16_dir, "The ", 30)


def test_two_threads_on_a_cross_origin_isolated_page(isolated_site, char_lm_dir, tmp_path):
    report = _drive(
        _page(isolated_site, model=EXPORT, prompt="The ", n=12, greedy=1, threads=2),
        tmp_path / "page.png",
    )
    assert report["status"] == "done" and report["notice"] is None
    assert report["stats"]["threads"] == 2
    assert report["ids"] == _python_greedy(char_lm_dir, "The ", 12)
    assert report["consoleErrors"] == []


def test_threads_fall_back_to_one_without_isolation(site, tmp_path):
    report = _drive(_page(site, model=EXPORT, prompt="The ", n=3, threads=2), tmp_path / "page.png")
    assert report["status"] == "done"
    assert report["stats"]["threads"] == 1
    assert "cross-origin isolated" in report["notice"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        pytest.param({"model": EXPORT, "prompt": "The été"}, "é", id="bad-prompt"),
        pytest.param({"model": "/exports/missing/", "prompt": "The "}, "/exports/missing/",
                     id="missing-model"),
        pytest.param({"model": TEXTLESS_EXPORT, "prompt": "The "}, "vocab", id="no-text"),
        pytest.param({"model": EXPORT, "prompt": "The ", "n": "many"}, "URL parameter n",
                     id="bad-n"),
    ],
)  # fmt: skip
def test_failures_reach_status(site, params, named, tmp_path):
    report = _drive(_page(site, **params), tmp_path / "page.png")
    assert report["status"].startswith("error:"), report["status"]
    assert named in report["status"]
    assert report["ids"] == []
