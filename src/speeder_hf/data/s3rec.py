"""Reader of the S3Rec / SASRec sequence text format (`user item item ...`, one user per line, chronological),
used by Beauty.txt, Sports_and_Outdoors.txt and most sequential-recommendation repositories."""

from __future__ import annotations

from pathlib import Path

from .reading import DataFormatError, read_lines, read_records, require
from .rec_dataset import ItemInfo, RecDataset, compose_text

DATASET_ID_FIELD = "asin"  # the Amazon product id that `items.jsonl` files carry beside the sequence file's number


def load_s3rec(
    sequence_path: str | Path,
    items_path: str | Path | None = None,
    name: str | None = None,
    *,
    id_field: str | None = DATASET_ID_FIELD,
) -> RecDataset:
    """Loads a sequence file in S3Rec format, with optional item metadata.

    Args:
        sequence_path: text file whose lines are `user_id item_id item_id ...` (integers, space separated,
            oldest first).
        items_path: optional JSON-lines file with one object per item: `item_id` (required, the sequence
            file's number) and any of `asin`, `title`, `categories`, `description`, `idgenrec_keywords`,
            `image_path` (relative to the file's folder). `shared/data/beauty/items.jsonl` has this form.
        name: dataset name; defaults to the file's stem.
        id_field: the items-file field holding the item's id in the original dataset (the Amazon ASIN by
            default). When the items file has it, items are named by it (`"B004756YJA"`), so users name items as
            their own data does; the sequence file's numbers are only the S3Rec preprocessing's row numbers. None,
            or an items file without the field, keeps the numbers as ids.

    The catalog holds the items that occur in the sequences, ordered by the sequence file's number, so with the
    usual contiguous 1-based numbers the internal index is `number - 1`, whichever ids name the items.

    Raises:
        DataFormatError: a malformed line; an items file that gives `id_field` for some items of the sequences
            but not for all, or gives one id to two items.
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
    name = name or sequence_path.name.split(".")[0]
    if items_path is None:
        return RecDataset.from_sequences(name, sequences, item_ids=item_ids)
    info, dataset_ids = _read_item_info(Path(items_path), id_field)
    if dataset_ids:
        rename = _dataset_ids(item_ids, dataset_ids, Path(items_path), id_field)
        sequences = {user: [rename[item] for item in seq] for user, seq in sequences.items()}
        info = {rename[number]: entry for number, entry in info.items() if number in rename}
        item_ids = [rename[number] for number in item_ids]
    return RecDataset.from_sequences(name, sequences, item_ids=item_ids, item_info=info)


def _read_item_info(path: Path, id_field: str | None) -> tuple[dict[str, ItemInfo], dict[str, tuple[str, int]]]:
    """`{number: ItemInfo}` and `{number: (dataset id, line)}` for the items whose record has `id_field`."""
    info: dict[str, ItemInfo] = {}
    dataset_ids: dict[str, tuple[str, int]] = {}
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
        if id_field is not None and record.get(id_field) not in (None, ""):
            dataset_ids[str(item_id)] = (str(record[id_field]), number)
    return info, dataset_ids


def _dataset_ids(
    numbers: list[str], dataset_ids: dict[str, tuple[str, int]], path: Path, id_field: str | None
) -> dict[str, str]:
    """`{number: dataset id}` for every item of the sequences; all or none of them must have a dataset id, since
    a catalog naming some items by number and others by ASIN could not tell an ASIN of digits from a number."""
    missing = [number for number in numbers if number not in dataset_ids]
    if missing:
        raise DataFormatError(
            path,
            next(iter(dataset_ids.values()))[1],
            f"items have a {id_field!r} here, but item {missing[0]} of the sequences has none; give every item "
            f"one, or load with id_field=None to name items by number.",
        )
    rename: dict[str, str] = {}
    owner: dict[str, str] = {}
    for number in numbers:
        dataset_id, line = dataset_ids[number]
        if dataset_id in owner:
            raise DataFormatError(
                path, line, f"{id_field} {dataset_id!r} of item {number} is also that of item {owner[dataset_id]}."
            )
        owner[dataset_id] = number
        rename[number] = dataset_id
    return rename


__all__ = ["DATASET_ID_FIELD", "load_s3rec"]
