"""The rows of :mod:`benchmarks.runtimes`: which runtime, how it runs the export, how many
threads, and which export (the LM, or its echo without compute)."""

from __future__ import annotations

from dataclasses import dataclass

# favor's session options (favor.runtime.session.session_options and favor-runtime.mjs's
# defaults), given to the bare onnxruntime-node rows so that they differ from the Generator
# rows only by favor-runtime's own work.
FAVOR_SESSION_OPTIONS = {"graphOptimizationLevel": "all", "enableMemPattern": False}


@dataclass(frozen=True)
class Case:
    """One row: ``threads`` None leaves ONNX Runtime's default; ``probe`` rows explain the
    others (decode cost without compute, default threads, ONNX Runtime's memory pattern,
    wasm outside the browser). ``mem_pattern`` (plain and bare rows only) turns on what
    favor's session options turn off."""

    runtime: str  # python, node or browser
    variant: str  # python: generator, static or plain; node: generator or bare; browser: generator
    threads: int | None
    module: str = "onnxruntime-node"  # node's onnxruntime package
    echo: bool = False
    probe: bool = False
    mem_pattern: bool = False

    @property
    def session_options(self) -> dict:
        """onnxruntime-node's session options: favor's for bare rows, the Generator's own
        defaults otherwise."""
        if self.variant != "bare":
            return {}
        return FAVOR_SESSION_OPTIONS | {"enableMemPattern": self.mem_pattern}

    @property
    def wasm(self) -> bool:
        return self.runtime == "browser" or self.module == "onnxruntime-web"

    @property
    def how(self) -> str:
        """What the row runs, for the table."""
        text = {
            ("python", "generator"): "favor.runtime Generator",
            ("python", "static"): "favor.runtime Generator, --static pair",
            ("python", "plain"): "InferenceSession.run, numpy feeds (state copied)",
            ("node", "generator"): f"favor-runtime Generator, {self.module}",
            ("node", "bare"): f"bare session.run, {self.module}",
            ("browser", "generator"): "favor-runtime Generator, onnxruntime-web wasm",
        }[self.runtime, self.variant]
        text += ", memory pattern on" if self.mem_pattern else ""
        return f"echo graph: {text}" if self.echo else text

    @property
    def key(self) -> str:
        """A stable id, e.g. ``node-bare-echo-t1``."""
        parts = [self.runtime, self.variant, *(["web"] if self.module == "onnxruntime-web" else [])]
        parts += ["echo"] if self.echo else []
        parts += ["mempattern"] if self.mem_pattern else []
        return "-".join([*parts, f"t{self.threads}" if self.threads else "tdefault"])


def cases(runtimes: set[str], *, probes: bool, static: bool = False) -> list[Case]:
    """The rows for ``runtimes`` (a subset of python, node, browser), probes included or not;
    ``static``: the export has the ``--static`` pair, so Python also runs it."""
    rows = [
        *(Case("python", "generator", t) for t in (1, 2)),
        *(Case("python", "static", t) for t in (1, 2) if static),
        *(Case("python", "plain", t) for t in (1, 2)),
        *(Case("node", "generator", t) for t in (1, 2)),
        *(Case("node", "bare", t) for t in (1, 2)),
        *(Case("browser", "generator", t) for t in (1, 2)),
    ]
    if probes:
        rows += [
            Case("python", "generator", None, probe=True),
            Case("node", "generator", None, probe=True),
            Case("python", "generator", 1, echo=True, probe=True),
            Case("python", "plain", 1, echo=True, probe=True),
            Case("node", "generator", 1, echo=True, probe=True),
            Case("node", "bare", 1, echo=True, probe=True),
            Case("python", "plain", 1, mem_pattern=True, probe=True),
            Case("node", "bare", 1, mem_pattern=True, probe=True),
            Case("node", "generator", 1, module="onnxruntime-web", probe=True),
        ]
    return [case for case in rows if case.runtime in runtimes]
