"""Readers of LLaRA's data (ljy0ustc/LLaRA): a folder of training, validation and test windows
`{"seq": [...10 ids, padded], "len_seq": n, "next": id}` as JSON lines, where MovieLens ids come as `[id, rating]`
pairs, with the titles in `id2name.txt` (`id::name`) or MovieLens's `u.item`.

LLaRA ships the windows as pickled pandas frames (`.df`); those are never loaded here (unpickling runs code), only
their `.jsonl` twins (see docs/data-formats.md for the one-line conversion).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import datasets

from .candidates import CandidateSampler, sample_rng
from .movielens import _read_movies
from .reading import DataFormatError, read_lines, read_records, require
from .rec_dataset import ItemInfo, RecDataset, columns_to_dataset, compose_text
from .split import SPLIT_COLUMN, TEST_STREAM

logger = logging.getLogger(__name__)

# The window files of a LLaRA folder, by the split they hold (LLaRA's own names and capitalisation).
LLARA_FILES = {"train": "train_data.jsonl", "validation": "Val_data.jsonl", "test": "Test_data.jsonl"}
# The title files LLaRA reads, in the order they are looked for: Steam's and LastFM's, then MovieLens's.
TITLE_FILES = ("id2name.txt", "u.item")
LLARA_MIN_HISTORY = 3  # LLaRA's loaders keep only windows with len_seq >= 3

_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "history": datasets.List(datasets.Value("int64")),
        "target": datasets.Value("int64"),
        "candidates": datasets.List(datasets.Value("int64")),
    }
)


def is_llara_folder(folder: str | Path) -> bool:
    """Whether `folder` holds LLaRA windows: one of `LLARA_FILES`, or the pickled `.df` frames LLaRA ships (which
    `load_llara` refuses with a message saying how to convert them)."""
    folder = Path(folder)
    stems = [Path(name).stem for name in LLARA_FILES.values()]
    return folder.is_dir() and any(
        (folder / f"{stem}{suffix}").is_file() for stem in stems for suffix in (".jsonl", ".df")
    )


def load_llara(folder: str | Path, name: str | None = None, min_history: int = LLARA_MIN_HISTORY) -> RecDataset:
    """Loads a LLaRA-format folder as a dataset whose sequences carry their split.

    Every window becomes one sequence, `history + [next]`, named `"<file stem>-<row>"` (LLaRA's windows have no
    user ids), with a `split` column saying which file it came from; `make_split` then gives each window one
    sample in that split (the `"given"` strategy), with evaluation candidates fixed by its seed and drawn, as
    LLaRA draws them, from the items outside the window's history and target. SASRec trains on the training
    windows only (`training_sequences`).

    Args:
        folder: holds any of `train_data.jsonl`, `Val_data.jsonl`, `Test_data.jsonl` and one title file,
            `id2name.txt` (`id::name` per line, LLaRA id = `id`) or `u.item` (MovieLens-100K, LLaRA id = movie
            id - 1). The catalog is every item of the title file, in LLaRA-id order, named by the title file's
            ids (MovieLens movie ids for `u.item`); titles keep u.item's year, "Toy Story (1995)".
        name: dataset name; defaults to the folder's name.
        min_history: windows with fewer history items are skipped (LLaRA keeps `len_seq >= 3`).

    Ids are plain integers or `[id, rating]` pairs (the rating is ignored). The padding id, one past the largest
    LLaRA id (the number of items, as LLaRA pads: 1682 for MovieLens, 3581 for Steam), is skipped wherever it
    appears in `seq`; the ids left must number `len_seq`.

    Raises:
        FileNotFoundError: no window file, only the `.df` pickles, or no title file.
        DataFormatError: a malformed line, an id outside the catalog, or a `len_seq` that does not match its `seq`.
    """
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1 (an empty history cannot be a sample), got {min_history}.")
    folder = Path(folder)
    files = {split: folder / file for split, file in LLARA_FILES.items() if (folder / file).is_file()}
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.df"))
        hint = (
            f"; its LLaRA pickles {pickles} are never loaded (unpickling runs code): convert them to JSON lines "
            "as docs/data-formats.md shows"
            if pickles
            else ""
        )
        raise FileNotFoundError(f"{folder} holds none of {list(LLARA_FILES.values())}{hint}.")
    for file in LLARA_FILES.values():
        pickle = (folder / file).with_suffix(".df")
        if pickle.is_file() and not (folder / file).is_file():
            logger.warning("%s is not read (a pickle); convert it to %s as docs/data-formats.md shows", pickle, file)
    catalog = _read_titles(folder)
    item_of = {llara_id: item_id for llara_id, item_id, _ in catalog}
    padding = catalog[-1][0] + 1
    sequences: dict[str, list[str]] = {}
    splits: list[str] = []
    for split, path in files.items():
        skipped = 0
        for row, number, ids in _read_windows(path, padding, min_history):
            if ids is None:
                skipped += 1
                continue
            unknown = next((i for i in ids if i not in item_of), None)
            if unknown is not None:
                raise DataFormatError(path, number, f"LLaRA id {unknown} is not in the catalog ({len(catalog)} items).")
            sequences[f"{path.stem}-{row}"] = [item_of[i] for i in ids]
            splits.append(split)
        if skipped:
            logger.info(
                "%s: skipped %d windows of fewer than %d history items, as LLaRA does", path, skipped, min_history
            )
    if not sequences:
        raise ValueError(f"{folder}: no window has {min_history} or more history items.")
    rec = RecDataset.from_sequences(
        name or folder.resolve().name,
        sequences,
        item_ids=[item_id for _, item_id, _ in catalog],
        item_info={item_id: info for _, item_id, info in catalog},
    )
    split_column = datasets.Value("string")
    return RecDataset(rec.name, rec.items, rec.sequences.add_column(SPLIT_COLUMN, splits, feature=split_column))


def _read_titles(folder: Path) -> list[tuple[int, str, ItemInfo]]:
    """`(LLaRA id, item id, info)` of every item of the folder's title file, in LLaRA-id order."""
    if (folder / "id2name.txt").is_file():
        path = folder / "id2name.txt"
        catalog, lines = [], {}
        for number, line in read_lines(path):
            item_id, separator, title = line.partition("::")
            item_id, title = item_id.strip(), title.strip() or None
            if not separator or not item_id.isdigit():
                raise DataFormatError(path, number, "expected 'id::name' with a non-negative integer id.")
            if lines.setdefault(int(item_id), number) != number:
                raise DataFormatError(path, number, f"id {item_id} already had line {lines[int(item_id)]}.")
            catalog.append((int(item_id), item_id, {"title": title, "text": compose_text(title)}))
    elif (folder / "u.item").is_file():
        path = folder / "u.item"
        movies = _read_movies(path)
        bad = next((movie for movie in movies if not movie.isdigit() or movie == "0"), None)
        if bad is not None:
            raise ValueError(f"{path}: movie id {bad!r} is not a positive integer, so it has no LLaRA id.")
        catalog = [(int(movie) - 1, movie, info) for movie, info in movies.items()]  # LLaRA id = movie id - 1
    else:
        raise FileNotFoundError(f"{folder} holds LLaRA windows but no title file ({' or '.join(TITLE_FILES)}).")
    if not catalog:
        raise ValueError(f"{path} lists no item.")
    return sorted(catalog, key=lambda entry: entry[0])


def _read_windows(path: Path, padding: int, min_history: int) -> Iterator[tuple[int, int, list[int] | None]]:
    """Yields `(row, line number, history + [next])` in LLaRA ids, the padding id left out, for every window of a
    `.jsonl` file (`row` counts the windows from 0); None instead of the ids for a window whose `len_seq` is under
    `min_history`. LLaRA filters on `len_seq` before reading `seq`, so such windows are not checked further: Steam's
    test file has one whose `seq` is all padding but whose `len_seq` is 1."""
    for row, (number, record) in enumerate(read_records(path)):
        seq, length, target = require(record, ("seq", "len_seq", "next"), path, number)
        if isinstance(length, bool) or not isinstance(length, int):
            raise DataFormatError(path, number, f"len_seq {length!r} is not an integer.")
        if length < min_history:
            yield row, number, None
            continue
        if not isinstance(seq, list):
            raise DataFormatError(path, number, f"seq must be a list of ids, got {type(seq).__name__}.")
        history = [i for i in (_llara_id(value, path, number) for value in seq) if i != padding]
        if length != len(history):
            raise DataFormatError(
                path,
                number,
                f"len_seq {length!r} does not match the {len(history)} ids of seq besides padding {padding}.",
            )
        target = _llara_id(target, path, number)
        if target == padding:
            raise DataFormatError(path, number, f"next is the padding id {padding}.")
        yield row, number, [*history, target]


def _llara_id(value: object, path: Path, number: int) -> int:
    """A LLaRA item id: a plain integer, or the first element of an `[id, rating]` pair (MovieLens)."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataFormatError(path, number, f"{value!r} is not an item id (a non-negative integer or [id, rating]).")
    return value


def load_llara_samples(
    path: str | Path,
    rec: RecDataset,
    id_offset: int = 1,
    num_candidates: int = 20,
    seed: int = 0,
) -> datasets.Dataset:
    """LLaRA's samples mapped onto `rec`'s catalog, with fixed candidates.

    Args:
        path: a LLaRA `.jsonl` file.
        rec: the dataset whose catalog the ids refer to; LLaRA id `i` is item id `str(i + id_offset)`
            (`id_offset=1` for MovieLens-100K loaded with `load_movielens`, whose ids are u.item movie ids).
        num_candidates, seed: LLaRA re-draws candidates on every read; here they are drawn once, from items
            outside the sample's history and target (LLaRA's rule; the user is unknown), keyed by the row number.

    Returns:
        A `datasets.Dataset` with `user_id` (`"<file stem>-<row>"`), `history`, `target`, `candidates`, in the
        split format of `make_split`.
    """
    path = Path(path)
    index = rec.item_index
    sampler = CandidateSampler(rec.num_items, num_candidates)
    columns: dict[str, list] = {name: [] for name in _FEATURES}

    def row_of(value: object, number: int) -> int:
        llara_id = value[0] if isinstance(value, list) else value  # MovieLens: [id, rating]
        item_id = str(int(llara_id) + id_offset)
        if item_id not in index:
            raise DataFormatError(path, number, f"LLaRA id {llara_id} (item {item_id!r}) is not in the catalog.")
        return index[item_id]

    for row, (number, record) in enumerate(read_records(path)):
        seq, length, target = require(record, ("seq", "len_seq", "next"), path, number)
        if not 1 <= int(length) <= len(seq):
            raise DataFormatError(path, number, f"len_seq {length} does not fit a seq of {len(seq)} ids.")
        history = [row_of(value, number) for value in seq[: int(length)]]
        target = row_of(target, number)
        user = f"{path.stem}-{row}"
        columns["user_id"].append(user)
        columns["history"].append(history)
        columns["target"].append(target)
        columns["candidates"].append(sampler.sample(target, set(history), sample_rng(seed, TEST_STREAM, user)))
    return columns_to_dataset(columns, _FEATURES, f"LLaRA samples from {path.name}")


__all__ = ["LLARA_FILES", "TITLE_FILES", "is_llara_folder", "load_llara", "load_llara_samples"]
