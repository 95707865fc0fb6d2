"""Modules whose constructor arguments are their configuration.

Checkpoints store ``config()`` and rebuild with ``type(m)(**config)``; the manifest records the
attention layers' configurations; ``repr`` shows them.
"""

from __future__ import annotations

from typing import ClassVar


class Configurable:
    """Mixin: :meth:`config` is the constructor arguments named in :attr:`CONFIG`, read from
    the attributes of the same names, in that order."""

    CONFIG: ClassVar[tuple[str, ...]]

    def config(self) -> dict:
        """Constructor arguments, JSON-ready: ``type(m)(**m.config())`` rebuilds ``m``."""
        return {name: getattr(self, name) for name in self.CONFIG}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())
