"""Where the benchmarks find the repository and write their results."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Not committed: figures depend on the machine and its load.
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
