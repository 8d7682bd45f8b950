"""Readers of the public Amazon review dumps: the 2014 release (McAuley et al.; `reviews_<Cat>_5.json.gz` +
`meta_<Cat>.json.gz`) and the 2023 release (Hou et al.; `<Cat>.jsonl(.gz)` + `meta_<Cat>.jsonl(.gz)`)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

from .reading import DataFormatError, read_records, require
from .rec_dataset import ItemInfo, RecDataset, compose_text


def load_amazon_2014(
    reviews_path: str | Path,
    meta_path: str | Path | None = None,
    name: str | None = None,
    *,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
) -> RecDataset:
    """Loads an Amazon 2014 category.

    Args:
        reviews_path: `reviews_<Cat>_5.json.gz` (or the full `reviews_<Cat>.json.gz`): one JSON object per line
            with `reviewerID`, `asin`, `unixReviewTime`.
        meta_path: optional `meta_<Cat>.json.gz`, whose lines are Python dict literals with `asin`, `title`,
            `categories`, `brand`, `description`.
        min_user_interactions, min_item_interactions: iterative k-core filter (the 5-core files already are).

    Reviews carry day-resolution times; same-day reviews keep file order.
    """
    reviews_path = Path(reviews_path)

    def events() -> Iterator[tuple[str, str, int]]:
        for number, record in read_records(reviews_path):
            user, item, stamp = require(record, ("reviewerID", "asin", "unixReviewTime"), reviews_path, number)
            yield user, item, _integer(stamp, reviews_path, number)

    info = _read_meta(Path(meta_path), "asin", _meta_2014, python_literals=True) if meta_path else None
    return RecDataset.from_interactions(
        name or reviews_path.name.split(".")[0].removeprefix("reviews_").removesuffix("_5"),
        events(),
        info,
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
    )


def load_amazon_2023(
    reviews_path: str | Path,
    meta_path: str | Path | None = None,
    name: str | None = None,
    *,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
) -> RecDataset:
    """Loads an Amazon Reviews 2023 category.

    Args:
        reviews_path: `<Cat>.jsonl` (or `.jsonl.gz`): `user_id`, `parent_asin`, `timestamp` (milliseconds).
        meta_path: optional `meta_<Cat>.jsonl(.gz)`: `parent_asin`, `title`, `main_category`, `categories`,
            `store`, `features`, `description`.
        min_user_interactions, min_item_interactions: iterative k-core filter; the 2023 files are not
            filtered, and 5-core is the usual protocol.

    Items are product families (`parent_asin`), as in the release's own benchmarks; repeated reviews of an
    item by the same user are kept once (the first). Timestamps are converted to seconds.
    """
    reviews_path = Path(reviews_path)

    def events() -> Iterator[tuple[str, str, int]]:
        for number, record in read_records(reviews_path):
            user, item, stamp = require(record, ("user_id", "parent_asin", "timestamp"), reviews_path, number)
            yield user, item, _integer(stamp, reviews_path, number) // 1000

    info = _read_meta(Path(meta_path), "parent_asin", _meta_2023) if meta_path else None
    return RecDataset.from_interactions(
        name or reviews_path.name.split(".")[0],
        events(),
        info,
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
        drop_duplicates=True,
    )


def _integer(value: object, path: Path, number: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataFormatError(path, number, f"timestamp {value!r} is not an integer.") from None


def _clean(value: object) -> str | None:
    """Unescapes HTML entities (`&amp;`) that the Amazon dumps keep in titles."""
    return html.unescape(" ".join(value.split())) or None if isinstance(value, str) else None


def _meta_2014(record: dict) -> ItemInfo:
    title = _clean(record.get("title"))
    brand = _clean(record.get("brand"))
    return {
        "title": title,
        "text": compose_text(
            title, f"Brand: {brand}" if brand else None, record.get("categories"), _clean(record.get("description"))
        ),
    }


def _meta_2023(record: dict) -> ItemInfo:
    title = _clean(record.get("title"))
    store = _clean(record.get("store"))
    description = record.get("description")
    return {
        "title": title,
        "text": compose_text(
            title,
            f"Store: {store}" if store else None,
            record.get("main_category"),
            record.get("categories"),
            record.get("features"),
            " ".join(description) if isinstance(description, list) else _clean(description),
        ),
    }


def _read_meta(path: Path, key: str, parse, python_literals: bool = False) -> dict[str, ItemInfo]:
    info = {}
    for number, record in read_records(path, python_literals=python_literals):
        (item,) = require(record, (key,), path, number)
        info[str(item)] = parse(record)
    return info


__all__ = ["load_amazon_2014", "load_amazon_2023"]
