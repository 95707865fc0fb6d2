"""What every benchmark report is made of: markdown tables, strict JSON and log-log plots."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIGURE_DPI = 120


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: all l).

    Every row must have one cell per header column: a short row would shift its cells under
    the wrong headers.
    """
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells for {len(header)} columns")
    rules = {"l": "---", "r": "---:"}
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(rules[a] for a in align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def json_ready(value: object) -> object:
    """NaN and inf as strings: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def write_json(path: Path, payload: object) -> None:
    """``payload`` as indented strict JSON, one trailing newline."""
    path.write_text(json.dumps(json_ready(payload), indent=1) + "\n", encoding="utf-8")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, which needs no display.

    Imported on demand: the benchmarks run (and their tests import) without plotting.
    """
    import matplotlib

    # Agg must be selected before pyplot is imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_axes(
    axis: Any, *, xlabel: str, ylabel: str, title: str | None = None, x_base: int = 2
) -> None:
    """Log-log axes with labels and a light grid; lengths read best on a base-2 x axis."""
    axis.set_xscale("log", base=x_base)
    axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if title is not None:
        axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)


def save_figure(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG and free it (pyplot keeps every open figure alive)."""
    figure.savefig(path, dpi=FIGURE_DPI)
    pyplot().close(figure)


def say_written(files: Sequence[str], folder: Path, seconds: float) -> None:
    """``wrote a.md, a.json and a.png to FOLDER in 12 s`` on stderr, the last progress line."""
    names = ", ".join(files[:-1]) + f" and {files[-1]}" if len(files) > 1 else files[0]
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    print(f"wrote {names} to {folder} in {took}", file=sys.stderr, flush=True)
