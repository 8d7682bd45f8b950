"""Reader of the S3Rec / SASRec sequence text format (`user item item ...`, one user per line, chronological),
used by Beauty.txt, Sports_and_Outdoors.txt and most sequential-recommendation repositories."""

from __future__ import annotations

from pathlib import Path

from .reading import DataFormatError, read_lines, read_records, require
from .rec_dataset import ItemInfo, RecDataset, compose_text


def load_s3rec(
    sequence_path: str | Path,
    items_path: str | Path | None = None,
    name: str | None = None,
) -> RecDataset:
    """Loads a sequence file in S3Rec format, with optional item metadata.

    Args:
        sequence_path: text file whose lines are `user_id item_id item_id ...` (integers, space separated,
            oldest first).
        items_path: optional JSON-lines file with one object per item: `item_id` (required) and any of
            `title`, `categories`, `description`, `idgenrec_keywords`, `image_path` (relative to the file's
            folder). `shared/data/beauty/items.jsonl` has this form.
        name: dataset name; defaults to the file's stem.

    The catalog holds the items that occur in the sequences, ordered by numeric id, so with the usual
    contiguous 1-based ids the internal index is `item_id - 1`.
    """
    sequence_path = Path(sequence_path)
    sequences: dict[str, list[str]] = {}
    for number, line in read_lines(sequence_path):
        tokens = line.split()
        if len(tokens) < 2:
            raise DataFormatError(sequence_path, number, "expected 'user_id item_id [item_id ...]'.")
        if not all(token.isdigit() for token in tokens):
            bad = next(token for token in tokens if not token.isdigit())
            raise DataFormatError(sequence_path, number, f"{bad!r} is not a non-negative integer id.")
        if tokens[0] in sequences:
            raise DataFormatError(sequence_path, number, f"user {tokens[0]} already had a line.")
        sequences[tokens[0]] = tokens[1:]
    if not sequences:
        raise ValueError(f"{sequence_path} holds no sequences.")
    item_ids = sorted({item for seq in sequences.values() for item in seq}, key=int)
    info = _read_item_info(Path(items_path)) if items_path is not None else None
    name = name or sequence_path.name.split(".")[0]
    return RecDataset.from_sequences(name, sequences, item_ids=item_ids, item_info=info)


def _read_item_info(path: Path) -> dict[str, ItemInfo]:
    info: dict[str, ItemInfo] = {}
    for number, record in read_records(path):
        (item_id,) = require(record, ("item_id",), path, number)
        title = record.get("title") or None
        image = record.get("image_path")
        info[str(item_id)] = {
            "title": title,
            "text": compose_text(
                title, record.get("categories"), record.get("description"), record.get("idgenrec_keywords")
            ),
            "image_path": str(path.parent / image) if image else None,
        }
    return info


__all__ = ["load_s3rec"]
