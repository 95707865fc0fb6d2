"""Installed package versions, as exports record them (the manifest, the ONNX producer)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``"favor-export"``); None if absent."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None
