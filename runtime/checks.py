"""Argument checks shared by the runtime's modules."""

from __future__ import annotations


def is_int(value: object, at_least: int | None = None) -> bool:
    """Whether ``value`` is an integer (``bool`` is not one here), ``>= at_least`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return at_least is None or value >= at_least
