"""Reader of RecBole's atomic files: `<name>.inter` (the interactions) and an optional `<name>.item` (the items),
tab-separated with a `field:type` header, the format RecBole's datasets and its shipped ml-100k come in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .reading import DataFormatError, read_lines
from .rec_dataset import ItemInfo, RecDataset, compose_text

INTER_SUFFIX, ITEM_SUFFIX = ".inter", ".item"
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")  # RecBole's atomic types
TITLE_FIELDS = ("movie_title", "title")  # the item field that holds the title, the first one present
TEXT_TYPES = ("token", "token_seq")  # item fields of these types are text; float fields are numeric features


def recbole_inter_file(folder: str | Path) -> Path | None:
    """The `.inter` file of a RecBole dataset folder: `<folder name>.inter` (RecBole names a dataset's files after
    its folder), else the folder's only `*.inter`; None when it has none.

    Raises:
        ValueError: several `.inter` files, none named after the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    own = folder / f"{folder.resolve().name}{INTER_SUFFIX}"
    if own.is_file():
        return own
    found = sorted(folder.glob(f"*{INTER_SUFFIX}"))
    if len(found) > 1:
        raise ValueError(f"{folder} holds several interaction files {[p.name for p in found]}; pass one of them.")
    return found[0] if found else None


def load_recbole(
    path: str | Path,
    name: str | None = None,
    *,
    min_rating: float | None = None,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
) -> RecDataset:
    """Loads RecBole atomic files as implicit-feedback sequences (every interaction counts).

    Args:
        path: a `<name>.inter` file or a folder holding one (see `recbole_inter_file`). Its header has
            `user_id:token` and `item_id:token`, optionally `rating:float` and `timestamp:float`, and may have
            other fields (ignored). Each user's interactions are ordered by timestamp (same-time ones, or all of
            them when there is no timestamp, keep file order).
        name: dataset name; defaults to the file's stem.
        min_rating: keep only interactions rated at least this (needs a `rating` field).
        min_user_interactions, min_item_interactions: the iterative k-core filter of `RecDataset.from_interactions`.

    A `<name>.item` beside the `.inter` file gives the items' metadata: `item_id:token`, the title from
    `movie_title` or `title`, and every other `token` / `token_seq` field joined into the item's text
    ("Toy Story. Release year: 1995. Class: Animation Children's Comedy."). Item ids are the files' tokens.

    Raises:
        DataFormatError: a header without a required field or with an unknown type, or a line with the wrong
            number of fields, an empty id, or a timestamp or rating that is not a number (the message names the
            file and line).
    """
    path = Path(path)
    if path.is_dir():
        inter = recbole_inter_file(path)
        if inter is None:
            raise FileNotFoundError(f"{path} holds no RecBole *{INTER_SUFFIX} file.")
        path = inter
    events = list(_read_interactions(path, min_rating))
    timed = bool(events) and events[0][2] is not None
    if timed:
        events.sort(key=lambda event: event[2])  # stable: same-time interactions keep file order
    item_path = path.with_suffix(ITEM_SUFFIX)
    info = _read_items(item_path) if item_path.is_file() else None
    return RecDataset.from_interactions(
        name or path.stem,
        # Seconds as integers (RecDataset's timestamps); the order was set above on the exact values.
        ((user, item, int(stamp) if timed else None) for user, item, stamp in events),
        info,
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
    )


def _header(path: Path, number: int, line: str, required: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """`{field: (column, type)}` of a header line of `name:type` fields."""
    fields: dict[str, tuple[int, str]] = {}
    for column, field in enumerate(line.split("\t")):
        field_name, separator, field_type = field.strip().partition(":")
        if not separator or field_type not in FIELD_TYPES:
            raise DataFormatError(
                path, number, f"header field {field!r} is not 'name:type' with a type among {FIELD_TYPES}."
            )
        fields[field_name] = (column, field_type)
    missing = [f for f in required if f not in fields]
    if missing:
        raise DataFormatError(path, number, f"the header lacks the field {missing[0]!r} (it has {list(fields)}).")
    return fields


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[dict[str, tuple[int, str]], int, list[str]]]:
    """Yields `(header, line number, fields)` for every data line, after checking its field count."""
    lines = read_lines(path)
    first = next(lines, None)
    if first is None:
        raise ValueError(f"{path} is empty.")
    header = _header(path, *first, required)
    for number, line in lines:
        values = line.split("\t")
        if len(values) != len(header):
            raise DataFormatError(
                path, number, f"expected {len(header)} tab-separated fields as in the header, got {len(values)}."
            )
        yield header, number, values


def _read_interactions(path: Path, min_rating: float | None) -> Iterator[tuple[str, str, float | None]]:
    for header, number, values in _rows(path, ("user_id", "item_id")):
        user, item = (values[header[f][0]].strip() for f in ("user_id", "item_id"))
        if not user or not item:
            raise DataFormatError(path, number, f"empty {'user_id' if not user else 'item_id'}.")
        stamp = _number(values, header, "timestamp", path, number)
        if min_rating is not None:
            if "rating" not in header:
                raise ValueError(f"{path}: min_rating was given, but the header has no 'rating' field.")
            if _number(values, header, "rating", path, number) < min_rating:
                continue
        yield user, item, stamp


def _number(values: list[str], header: dict[str, tuple[int, str]], field: str, path: Path, number: int):
    """The float in `field`, or None when the header has no such field."""
    if field not in header:
        return None
    text = values[header[field][0]].strip()
    try:
        return float(text)
    except ValueError:
        raise DataFormatError(path, number, f"{field} {text!r} is not a number.") from None


def _read_items(path: Path) -> dict[str, ItemInfo]:
    info: dict[str, ItemInfo] = {}
    lines: dict[str, int] = {}
    for header, number, values in _rows(path, ("item_id",)):
        item = values[header["item_id"][0]].strip()
        if not item:
            raise DataFormatError(path, number, "empty item_id.")
        if lines.setdefault(item, number) != number:
            raise DataFormatError(path, number, f"item {item!r} already had line {lines[item]}.")
        title_field = next((f for f in TITLE_FIELDS if f in header), None)
        title = (values[header[title_field][0]].strip() or None) if title_field else None
        details = [
            f"{field.replace('_', ' ').capitalize()}: {values[column].strip()}"
            for field, (column, field_type) in header.items()
            if field not in ("item_id", title_field) and field_type in TEXT_TYPES and values[column].strip()
        ]
        info[item] = {"title": title, "text": compose_text(title, *details)}
    return info


__all__ = ["ITEM_SUFFIX", "INTER_SUFFIX", "load_recbole", "recbole_inter_file"]
