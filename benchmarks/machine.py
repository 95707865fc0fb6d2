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


# The x86 features that decide which integer kernels ONNX Runtime picks (int8 speed and, for 8-bit
# weights, whether pair sums saturate): reported beside every figure that depends on them.
INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features(wanted: tuple[str, ...] = INT8_FEATURES) -> list[str]:
    """Which of ``wanted`` /proc/cpuinfo lists as CPU flags (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in wanted if name in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """Date, CPU, core count, library versions and CUDA device: what every report header needs.

    Imports torch and onnxruntime lazily, so that importing this module stays cheap.
    """
    import datetime
    import os

    import onnxruntime
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
        "cuda_device": cuda,
    }
