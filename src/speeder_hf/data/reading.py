"""Line-oriented reading of raw data files (plain or gzip), with errors that name the file and line."""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A raw data file has a line that cannot be parsed; the message names the file and the 1-based line."""

    def __init__(self, path: str | Path, line_number: int, problem: str):
        self.path, self.line_number = str(path), line_number
        super().__init__(f"{path}, line {line_number}: {problem}")


def read_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line)` for every non-blank line, without the newline; `.gz` files are decompressed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def read_records(path: str | Path, python_literals: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(line_number, record)` from a JSON-lines file.

    With `python_literals`, lines that are not JSON are read as Python dict literals (the Amazon 2014 metadata
    files are written that way); `ast.literal_eval` only builds plain containers, never objects.
    """
    for number, line in read_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if not python_literals:
                raise DataFormatError(path, number, f"not valid JSON ({error.msg}).") from None
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise DataFormatError(path, number, "neither JSON nor a Python dict literal.") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, f"expected an object, got {type(record).__name__}.")
        yield number, record


def require(record: dict[str, Any], keys: tuple[str, ...], path: str | Path, line_number: int) -> list[Any]:
    """Returns `record[key]` for each key, raising `DataFormatError` that names the first missing one."""
    missing = [key for key in keys if record.get(key) in (None, "")]
    if missing:
        raise DataFormatError(path, line_number, f"missing field {missing[0]!r}.")
    return [record[key] for key in keys]


__all__ = ["DataFormatError", "read_lines", "read_records", "require"]
