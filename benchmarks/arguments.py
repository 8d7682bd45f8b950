"""Parsing a benchmark's arguments: one dataclass per benchmark, read by `transformers.HfArgumentParser` as the
main job's `FinetuneArguments` is, so every flag is spelt `--snake_case` (the `--kebab-case` alias HfArgumentParser
adds keeps older recorded commands working)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from transformers import HfArgumentParser

T = TypeVar("T")


def parse_arguments(
    arguments: type[T], argv: Sequence[str] | None, description: str, *, allow_unknown: bool = False
) -> tuple[T, list[str]]:
    """Parses `argv` (None: this process's arguments) into an `arguments` dataclass; returns it and, with
    `allow_unknown`, the arguments it did not know (else none are allowed).

    A `ValueError` of the dataclass's `__post_init__` (a bad combination of flags) becomes an argparse usage error,
    one line and exit code 2, like a malformed flag.
    """
    parser = HfArgumentParser(arguments, description=description)
    try:
        parsed, *rest = parser.parse_args_into_dataclasses(
            args=None if argv is None else list(argv), return_remaining_strings=True
        )
    except ValueError as error:
        parser.error(str(error))
    remaining = list(rest[0]) if rest else []
    if remaining and not allow_unknown:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return parsed, remaining


def split_commas(values: Sequence[str]) -> list[str]:
    """`["beauty,movielens", "sports"]` -> `["beauty", "movielens", "sports"]`: a list flag takes comma-separated
    values, as the job's `--modalities text,image,id` does, or space-separated ones, as `HfArgumentParser` reads a
    list field."""
    return [part for value in values for part in str(value).split(",") if part]


__all__ = ["parse_arguments", "split_commas"]
