"""Readers of MovieLens: the 100K files (`u.data` ratings, `u.item` movies) and the 1M/10M files
(`ratings.dat`, `movies.dat`, `::`-separated), plus the poster map kept in shared/data."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from .reading import DataFormatError, read_lines
from .rec_dataset import ItemInfo, RecDataset, compose_text

# The 19 genre flags of u.item, in file order (ML-100K README).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def load_movielens(
    ratings_path: str | Path,
    movies_path: str | Path | None = None,
    name: str = "movielens",
    *,
    min_rating: float | None = None,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
) -> RecDataset:
    """Loads MovieLens ratings as implicit-feedback sequences (every rating is an interaction).

    Args:
        ratings_path: `u.data` (tab-separated `user item rating timestamp`) or `ratings.dat`
            (`user::item::rating::timestamp`); the separator is detected from the first line.
        movies_path: optional `u.item` (`id|title|release date|video date|url|19 genre flags`, latin-1) or
            `movies.dat` (`id::title::Genre|Genre`, latin-1).
        min_rating: keep only ratings >= this value.

    Item ids are MovieLens movie ids (strings); titles keep the year, e.g. "Toy Story (1995)". Same-second
    ratings keep file order.
    """
    ratings_path = Path(ratings_path)

    def events() -> Iterator[tuple[str, str, int]]:
        separator = None
        for number, line in read_lines(ratings_path, encoding="latin-1"):
            separator = separator or ("::" if "::" in line else "\t")
            fields = line.split(separator)
            if len(fields) != 4:
                raise DataFormatError(ratings_path, number, "expected 4 fields: user, item, rating, timestamp.")
            try:
                rating, stamp = float(fields[2]), int(fields[3])
            except ValueError:
                raise DataFormatError(ratings_path, number, "rating or timestamp is not a number.") from None
            if min_rating is None or rating >= min_rating:
                yield fields[0].strip(), fields[1].strip(), stamp

    info = _read_movies(Path(movies_path)) if movies_path is not None else None
    return RecDataset.from_interactions(
        name,
        events(),
        info,
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions,
    )


def _read_movies(path: Path) -> dict[str, ItemInfo]:
    info: dict[str, ItemInfo] = {}
    for number, line in read_lines(path, encoding="latin-1"):
        if "::" in line:
            fields = line.split("::")
            if len(fields) != 3:
                raise DataFormatError(path, number, "expected 'id::title::genres'.")
            genres = [g for g in fields[2].split("|") if g]
        else:
            fields = line.split("|")
            if len(fields) != 5 + len(ML100K_GENRES):
                raise DataFormatError(path, number, f"expected {5 + len(ML100K_GENRES)} '|'-separated fields.")
            genres = [g for g, flag in zip(ML100K_GENRES, fields[5:]) if flag.strip() == "1" and g != "unknown"]
        title = fields[1].strip() or None
        info[fields[0].strip()] = {
            "title": title,
            "text": compose_text(title, f"Genres: {', '.join(genres)}" if genres else None),
        }
    return info


def movielens_posters(mapping_path: str | Path, id_column: str = "ml100k_item_id") -> dict[str, str]:
    """Reads `shared/data/movielens_posters/ml100k_to_ml1m_posters.tsv` into `{movie id: absolute poster path}`
    (movies without a poster are left out), ready for `attach_images`."""
    mapping_path = Path(mapping_path)
    with mapping_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if rows and (id_column not in rows[0] or "poster" not in rows[0]):
        raise ValueError(f"{mapping_path}: expected columns {id_column!r} and 'poster', got {list(rows[0])}.")
    return {row[id_column]: str(mapping_path.parent / row["poster"]) for row in rows if row["poster"]}


__all__ = ["ML100K_GENRES", "load_movielens", "movielens_posters"]
