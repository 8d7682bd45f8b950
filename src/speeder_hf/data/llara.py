"""Reader of LLaRA's evaluation samples (ljy0ustc/LLaRA `Val_data` / `Test_data`, as the pickle-free `.jsonl` twins
in shared/data): rows `{"seq": [...10 ids, padded], "len_seq": n, "next": id}`, where MovieLens ids come as
`[id, rating]` pairs."""

from __future__ import annotations

from pathlib import Path

import datasets

from .candidates import CandidateSampler, sample_rng
from .reading import DataFormatError, read_records, require
from .rec_dataset import RecDataset, columns_to_dataset
from .split import TEST_STREAM

_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "history": datasets.List(datasets.Value("int64")),
        "target": datasets.Value("int64"),
        "candidates": datasets.List(datasets.Value("int64")),
    }
)


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


__all__ = ["load_llara_samples"]
