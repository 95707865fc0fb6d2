"""The JavaScript rows of :mod:`benchmarks.runtimes`: Node (``benchmarks/js/runtime_bench.mjs``)
and headless Chromium (``benchmarks/js/bench.html``, driven by ``drive_bench.mjs``). Each runs
as a subprocess that prints its first report as a JSON line, then answers burst requests (one
JSON line each way), so that the harness can interleave bursts across runtimes.

The page is served from the repository root by a local server that sends the cross-origin
isolation headers: onnxruntime-web needs them (SharedArrayBuffer) for more than one wasm
thread, and the page's timer then has its fine resolution.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

from benchmarks.paths import REPO_ROOT

JS_DIR = REPO_ROOT / "benchmarks" / "js"
NODE_MODULES = REPO_ROOT / "tests" / "node" / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
# What the page fetches onnxruntime-web's wasm from, relative to the repository root.
WASM_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
TIMEOUT_S = 300


def chromium_path() -> str | None:
    return str(CHROMIUM) if CHROMIUM.is_file() else shutil.which("chromium")


def missing(runtime: str) -> str | None:
    """Why ``runtime`` (``node`` or ``browser``) cannot run here, or None."""
    needs = {
        "node on PATH": shutil.which("node"),
        "tests/node/node_modules/onnxruntime-node (npm ci --ignore-scripts in tests/node)": (
            NODE_MODULES / "onnxruntime-node"
        ).is_dir(),
    }
    if runtime == "browser":
        needs = {
            "node on PATH": shutil.which("node"),
            "chromium (/usr/bin/chromium or on PATH)": chromium_path(),
            "tests/node/node_modules/playwright-core and onnxruntime-web "
            "(npm ci --ignore-scripts in tests/node)": (NODE_MODULES / "playwright-core").is_dir()
            and (NODE_MODULES / "onnxruntime-web").is_dir(),
        }
    absent = [what for what, found in needs.items() if not found]
    return f"needs {'; '.join(absent)}" if absent else None


def camel_case(name: str) -> str:
    """``prefill_repeats`` -> ``prefillRepeats``: the page's parameter names."""
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


class JsonLines:
    """A subprocess that speaks JSON lines: :meth:`read` its next line, :meth:`ask` a request
    and read the answer. Its stderr goes to a file, read when it fails."""

    def __init__(self, command: Sequence[str]) -> None:
        self.name = Path(command[1]).name
        # Closed by close(): the process outlives this call.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=TIMEOUT_S)
            self.stderr.seek(0)
            lines = self.stderr.read().strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"{self.name} ended without a report")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


def plan_options(plan: dict[str, int]) -> list[str]:
    """``plan`` as the Node runner's options: ``prefill_repeats`` -> ``--prefill-repeats=N``."""
    return [f"--{key.replace('_', '-')}={value}" for key, value in plan.items()]


class NodeRow:
    """One Node row: ``module`` is ``onnxruntime-node`` or ``onnxruntime-web``; ``threads``
    None leaves onnxruntime's default."""

    def __init__(
        self,
        export_dir: Path,
        module: str,
        variant: str,
        threads: int | None,
        plan: dict[str, int],
        session_options: dict | None = None,
    ) -> None:
        self.command = [
            "node",
            str(JS_DIR / "runtime_bench.mjs"),
            f"--ort={NODE_MODULES / module}",
            f"--export={export_dir}",
            f"--variant={variant}",
            f"--threads={threads or 0}",
            f"--session-options={json.dumps(session_options or {})}",
            *plan_options(plan),
            "--serve",
        ]
        self.runner: JsonLines | None = None

    def start(self) -> dict:
        self.runner = JsonLines(self.command)
        return self.runner.read()

    def burst(self, prefills: int, steps: int) -> dict:
        return self.runner.ask({"prefills": prefills, "steps": steps})

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


class _IsolatedHandler(SimpleHTTPRequestHandler):
    """Files from the repository root, the export under ``/exports/<name>/``, sent with the
    cross-origin isolation headers."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def __init__(self, *args, export: tuple[str, Path], **kwargs) -> None:
        self.export = export
        super().__init__(*args, directory=str(REPO_ROOT), **kwargs)

    def translate_path(self, path: str) -> str:
        prefix, folder = self.export
        if path.startswith(prefix):
            return str(folder / path[len(prefix) :].split("?")[0])
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A browser that closes a connection mid-transfer is no failure of the benchmark.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(export_dir: Path, name: str) -> Iterator[str]:
    """Serve the repository and ``export_dir`` on 127.0.0.1 (an ephemeral port); yield the
    export's URL prefix, ``http://127.0.0.1:PORT/exports/<name>/``."""
    prefix = f"/exports/{name}/"
    handler = partial(_IsolatedHandler, export=(prefix, export_dir))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class BrowserPages:
    """The browser rows: one Chromium, one open page per thread count, served by :func:`serve`.

    :meth:`start` opens them one after another and returns Chromium's version and each page's
    report (``results``: its measurements; ``wasm``: the .wasm files it fetched).
    """

    def __init__(self, export_dir: Path, name: str, threads: Sequence[int], plan: dict) -> None:
        self.export_dir, self.name, self.threads = export_dir, name, threads
        self.plan = {camel_case(key): value for key, value in plan.items()}
        self.server = contextlib.ExitStack()
        self.driver: JsonLines | None = None

    def start(self) -> tuple[str, list[dict]]:
        model = self.server.enter_context(serve(self.export_dir, self.name))
        origin = model.split("/exports/")[0]
        urls = [
            f"{origin}/benchmarks/js/bench.html?"
            + urlencode({"model": model, "threads": count, **self.plan})
            for count in self.threads
        ]
        self.driver = JsonLines(
            [
                "node",
                str(JS_DIR / "drive_bench.mjs"),
                *urls,
                "--chromium",
                chromium_path(),
                "--serve",
            ]
        )
        report = self.driver.read()
        for page in report["pages"]:
            if page["status"] != "done" or page["results"] is None:
                raise RuntimeError(f"the benchmark page ended with status {page['status']!r}")
        return report["browser"], report["pages"]

    def burst(self, page: int, prefills: int, steps: int) -> dict:
        return self.driver.ask({"page": page, "prefills": prefills, "steps": steps})

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()
        self.server.close()
