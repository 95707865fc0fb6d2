"""``AttentionConfig``: the :class:`FavorAttention` options a model gives each attention layer.

A model holds one config and builds every layer from it, so an option added to
:class:`FavorAttention` needs one new field here and reaches every model. ``dim_head`` and
``causal`` are not part of it: they follow from where a layer sits, not from the options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .attention import FavorAttention


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """:class:`FavorAttention`'s keyword arguments but ``dim_head`` and ``causal``.

    The defaults are :class:`FavorAttention`'s. Layer ``i`` of a model draws its features from
    ``seed + i`` (:meth:`for_layer`), so layers share a config but not their projections.
    """

    nb_features: int = 256
    kernel: str = "posrf"
    projection: str = "orf"
    seed: int = 0
    chunk_size: int = 64
    orf_norm: str = "chi"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in :class:`FavorAttention`'s order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def _unknown(cls, names: Iterable[str]) -> str | None:
        """A message naming the keys of ``names`` that are not fields, or None."""
        unknown = sorted(set(names) - set(cls.field_names()))
        if not unknown:
            return None
        return (
            f"unknown attention option(s) {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(cls.field_names())}"
        )

    def replace(self, **changes: object) -> AttentionConfig:
        """A copy with ``changes``; an unknown name is a TypeError, as for a bad keyword."""
        problem = self._unknown(changes)
        if problem:
            raise TypeError(problem)
        return dataclasses.replace(self, **changes)

    def for_layer(self, index: int) -> AttentionConfig:
        """The config of layer ``index``: its own seed, ``seed + index``."""
        return self.replace(seed=self.seed + index)

    def to_json(self) -> dict:
        """The fields as a JSON-ready dict, which are also :class:`FavorAttention` keywords."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AttentionConfig:
        """The config ``data`` describes; absent fields take their defaults.

        Configs saved before a field existed were built with its default, so they load as
        they were saved.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"an attention config must be a JSON object, got {type(data).__name__}"
            )
        problem = cls._unknown(data)
        if problem:
            raise ValueError(problem)
        return cls(**data)

    def build(self, dim_head: int, *, causal: bool) -> FavorAttention:
        """The :class:`FavorAttention` layer for heads of ``dim_head``: ``(B, H, N, dim_head)``."""
        return FavorAttention(dim_head, causal=causal, **self.to_json())
