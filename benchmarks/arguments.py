"""Argument types shared by the benchmarks' command lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def list_arg(convert: Callable[[str], object]) -> Callable[[str], tuple]:
    """An argparse type for comma-separated values, each read by ``convert``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(part.strip()) for part in text.split(",") if part.strip())
        except (ValueError, KeyError) as error:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {error}") from error
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not >= 1")
    return value


# Sequence lengths and decode contexts: ``512,1024``.
lengths_arg = list_arg(positive_int)


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    """The reference LM's shape: ``--dim``, ``--depth``, ``--heads`` and ``--features`` (M)."""
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=128)


def add_number_options(
    parser: argparse.ArgumentParser, options: Sequence[tuple[str, type, float, str]]
) -> None:
    """Numeric options, each ``(flag, int or float, default, help)``; the help gets the default."""
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default:g})")


def add_sizes_options(
    parser: argparse.ArgumentParser,
    flag: str,
    default: Sequence[int],
    quick: Sequence[int],
    what: str,
    note: str = "",
) -> None:
    """``flag``, comma-separated sizes of ``what``, and ``--quick``, which stands for ``quick``.

    The caller replaces the sizes with ``quick`` when ``--quick`` is given: argparse cannot
    tell a default from an explicit value.
    """
    parser.add_argument(
        flag,
        type=lengths_arg,
        default=",".join(map(str, default)),
        help=f"comma-separated {what}{note} (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only {what} {','.join(map(str, quick))} (overrides {flag})",
    )
