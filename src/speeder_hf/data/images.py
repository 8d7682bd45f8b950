"""Attaching local item images to a `RecDataset`, from a folder, a table with a path column, or a mapping."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from .reading import read_records, require
from .rec_dataset import RecDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def attach_images(
    rec: RecDataset,
    source: str | Path | Mapping[str, str | Path],
    *,
    id_column: str = "item_id",
    path_column: str = "image_path",
) -> RecDataset:
    """Returns a copy of `rec` whose `items.image_path` points at each item's image (None where there is none).

    Args:
        source: one of
            - a folder holding `<item_id>.<ext>` files (ext in `IMAGE_EXTENSIONS`);
            - a `.csv`, `.tsv` or `.jsonl` table with `id_column` and `path_column` (relative paths are taken
              from the table's folder);
            - a mapping `{item_id: path}`.
            Entries for items outside the catalog are ignored.

    Raises:
        FileNotFoundError: a listed image file does not exist (the message names the item). Whether a file
            decodes is checked when features are extracted (`speeder_hf.catalog.encoders`).
    """
    if isinstance(source, Mapping):
        paths = {str(k): str(v) for k, v in source.items()}
    else:
        source = Path(source)
        if source.is_dir():
            paths = {f.stem: str(f) for f in sorted(source.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS}
        else:
            paths = _read_table(source, id_column, path_column)
    chosen = [paths.get(item_id) for item_id in rec.items["item_id"][:]]
    for item_id, path in zip(rec.items["item_id"][:], chosen):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"Image of item {item_id!r} not found: {path}")
    return rec.with_item_column("image_path", chosen)


def _read_table(path: Path, id_column: str, path_column: str) -> dict[str, str]:
    if path.suffix == ".jsonl":
        rows = (require(record, (id_column, path_column), path, n) for n, record in read_records(path))
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            if reader.fieldnames is None or not {id_column, path_column} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path}: expected columns {id_column!r} and {path_column!r}, got {reader.fieldnames}."
                )
            rows = [(row[id_column], row[path_column]) for row in reader if row[path_column]]
    else:
        raise ValueError(f"{path}: image source must be a folder, a .csv/.tsv/.jsonl table or a mapping.")
    return {str(item_id): str(path.parent / image) for item_id, image in rows}


__all__ = ["IMAGE_EXTENSIONS", "attach_images"]
