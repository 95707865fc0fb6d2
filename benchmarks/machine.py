"""What machine a benchmark ran on, for the headers of its reports."""

from __future__ import annotations


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or 'unknown'."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
