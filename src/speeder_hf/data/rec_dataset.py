"""`RecDataset`: an item table plus chronological user sequences, the common form every loader produces."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypedDict

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import generate_random_fingerprint

ITEM_FEATURES = datasets.Features(
    {
        "item_id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "text": datasets.Value("string"),
        "image_path": datasets.Value("string"),
    }
)


def columns_to_dataset(
    columns: Mapping[str, list], features: datasets.Features, description: str = ""
) -> datasets.Dataset:
    """A `datasets.Dataset` from Python columns, through Arrow directly (much faster than `Dataset.from_dict`,
    which encodes row by row)."""
    table = pa.Table.from_pydict(dict(columns), schema=features.arrow_schema)
    # A random fingerprint, as datasets gives non-hashable transforms: hashing the whole table with dill is slow,
    # and fails on Python 3.12 with pyarrow 26 types.
    return datasets.Dataset(
        table,
        info=datasets.DatasetInfo(description=description, features=features),
        fingerprint=generate_random_fingerprint(),
    )


class ItemInfo(TypedDict, total=False):
    """Optional metadata of one item. `text` is the item's full description (title included), as written into
    text-style prompts and fed to the text encoder; `image_path` is a local image file."""

    title: str | None
    text: str | None
    image_path: str | None


def compose_text(title: str | None, *details: str | list | None) -> str | None:
    """The `text` of an item: its title and the non-empty details as sentences, each ending in punctuation
    (None if all are empty).

    A list detail is joined with ", "; a list of lists (an Amazon category tree) becomes "a > b > c; d > e".
    """
    parts = []
    for part in (title, *details):
        if isinstance(part, list):
            paths = [p for p in part if p]
            if paths and all(isinstance(p, list) for p in paths):
                part = "; ".join(" > ".join(map(str, p)) for p in paths)
            else:
                part = ", ".join(map(str, paths))
        part = " ".join(str(part or "").split())
        if part:
            parts.append(part if part[-1] in ".!?" else part + ".")
    return " ".join(parts) or None


@dataclass
class RecDataset:
    """A sequential-recommendation dataset.

    Attributes:
        name: short name (used in cache keys and model cards).
        items: `datasets.Dataset` with columns `item_id` (str, unique), `title`, `text`, `image_path` (str or
            None). The row of an item is its *internal index*, used everywhere else.
        sequences: `datasets.Dataset` with columns `user_id` (str), `items` (list of internal indices,
            chronological) and optionally `timestamps` (list of int, same length, seconds).
    """

    name: str
    items: datasets.Dataset
    sequences: datasets.Dataset
    _user_items: dict[str, frozenset[int]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c for c in ITEM_FEATURES if c not in self.items.column_names]
        if missing:
            raise ValueError(f"RecDataset {self.name!r}: items lack columns {missing}.")
        for column in ("user_id", "items"):
            if column not in self.sequences.column_names:
                raise ValueError(f"RecDataset {self.name!r}: sequences lack column {column!r}.")
        ids = self.items["item_id"][:]
        empty = [row for row, item_id in enumerate(ids) if not item_id]
        if empty:
            raise ValueError(f"RecDataset {self.name!r}: item row {empty[0]} has an empty item_id.")
        if len(set(ids)) != len(ids):
            duplicate = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"RecDataset {self.name!r}: item_id {duplicate!r} appears more than once.")
        users = self.sequences["user_id"][:]
        if len(set(users)) != len(users):
            duplicate = next(u for u, n in Counter(users).items() if n > 1)
            raise ValueError(f"RecDataset {self.name!r}: user {duplicate!r} has more than one sequence.")
        self._check_sequences()

    def _check_sequences(self) -> None:
        table = self.sequences.with_format("arrow")
        lengths = pc.list_value_length(table["items"]).to_numpy(zero_copy_only=False)
        if (lengths == 0).any():
            row = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(
                f"RecDataset {self.name!r}: user {self.sequences[row]['user_id']!r} has an empty sequence."
            )
        flat = pc.list_flatten(table["items"]).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((flat < 0) | (flat >= self.num_items))
        if bad.size:
            row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
            user, item = self.sequences[row]["user_id"], int(flat[bad[0]])
            raise ValueError(
                f"RecDataset {self.name!r}: user {user!r} has item index {item}, "
                f"but there are {self.num_items} items (indices 0..{self.num_items - 1})."
            )
        if self.has_timestamps:
            stamp_lengths = pc.list_value_length(table["timestamps"]).to_numpy(zero_copy_only=False)
            if (stamp_lengths != lengths).any():
                row = int(np.flatnonzero(stamp_lengths != lengths)[0])
                raise ValueError(
                    f"RecDataset {self.name!r}: user {self.sequences[row]['user_id']!r} has {lengths[row]} items but "
                    f"{stamp_lengths[row]} timestamps."
                )

    # ----- views --------------------------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def has_timestamps(self) -> bool:
        return "timestamps" in self.sequences.column_names

    @cached_property
    def item_index(self) -> dict[str, int]:
        """Maps an external `item_id` to its internal index."""
        return {item_id: row for row, item_id in enumerate(self.items["item_id"][:])}

    def user_items(self) -> dict[str, frozenset[int]]:
        """Every item each user interacted with (candidate negatives are drawn outside this set)."""
        if self._user_items is None:
            self._user_items = {
                user: frozenset(seq) for user, seq in zip(self.sequences["user_id"][:], self.sequences["items"][:])
            }
        return self._user_items

    def statistics(self) -> dict[str, float]:
        """Users, items, interactions, sequence-length summary and density."""
        lengths = pc.list_value_length(self.sequences.with_format("arrow")["items"]).to_numpy(zero_copy_only=False)
        interactions = int(lengths.sum())
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": interactions,
            "mean_length": float(lengths.mean()),
            "median_length": float(np.median(lengths)),
            "min_length": int(lengths.min()),
            "max_length": int(lengths.max()),
            "density": interactions / (self.num_users * self.num_items),
            "items_with_title": sum(t is not None for t in self.items["title"][:]),
            "items_with_image": sum(p is not None for p in self.items["image_path"][:]),
        }

    # ----- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_sequences(
        cls,
        name: str,
        sequences: Mapping[str, Sequence[str]],
        item_ids: Sequence[str] | None = None,
        item_info: Mapping[str, ItemInfo] | None = None,
        timestamps: Mapping[str, Sequence[int]] | None = None,
    ) -> RecDataset:
        """Builds a dataset from chronological sequences of external item ids.

        Args:
            sequences: `{user_id: [item_id, ...]}`, oldest first.
            item_ids: the catalog order (internal index = position). Defaults to order of first appearance.
                Items listed here but never interacted with stay in the catalog.
            item_info: optional `{item_id: ItemInfo}` metadata.
            timestamps: optional `{user_id: [seconds, ...]}` aligned with `sequences`.
        """
        if item_ids is None:
            item_ids = list(dict.fromkeys(item for seq in sequences.values() for item in seq))
        item_ids = [str(i) for i in item_ids]
        index = {item_id: row for row, item_id in enumerate(item_ids)}
        item_info = item_info or {}
        items = columns_to_dataset(
            {
                "item_id": item_ids,
                "title": [item_info.get(i, {}).get("title") for i in item_ids],
                "text": [item_info.get(i, {}).get("text") for i in item_ids],
                "image_path": [item_info.get(i, {}).get("image_path") for i in item_ids],
            },
            ITEM_FEATURES,
        )
        columns: dict[str, list[Any]] = {"user_id": [], "items": []}
        for user, seq in sequences.items():
            unknown = [i for i in seq if str(i) not in index]
            if unknown:
                raise KeyError(f"RecDataset {name!r}: user {user!r} has item {unknown[0]!r}, which is not in item_ids.")
            columns["user_id"].append(str(user))
            columns["items"].append([index[str(i)] for i in seq])
        features = {"user_id": datasets.Value("string"), "items": datasets.List(datasets.Value("int64"))}
        if timestamps is not None:
            columns["timestamps"] = [list(timestamps[user]) for user in sequences]
            features["timestamps"] = datasets.List(datasets.Value("int64"))
        return cls(name, items, columns_to_dataset(columns, datasets.Features(features)))

    @classmethod
    def from_interactions(
        cls,
        name: str,
        interactions: Iterable[tuple[str, str, int | None]],
        item_info: Mapping[str, ItemInfo] | None = None,
        *,
        min_user_interactions: int = 1,
        min_item_interactions: int = 1,
        drop_duplicates: bool = False,
    ) -> RecDataset:
        """Builds a dataset from `(user_id, item_id, timestamp)` events in any order.

        Each user's events are sorted by timestamp; ties keep file order. `timestamp` may be None for every
        event (the order given is then the order used) but not for some only. Users and items are filtered
        to the iterative k-core given by the two minimums. The catalog holds the items left after filtering, in
        `item_info` order, then (items without metadata) in order of first appearance.

        Args:
            drop_duplicates: keep only the first interaction of a user with an item.
        """
        events: dict[str, list[tuple[int, str]]] = {}
        timed: set[bool] = set()
        for user, item, stamp in interactions:
            timed.add(stamp is not None)
            events.setdefault(str(user), []).append((0 if stamp is None else int(stamp), str(item)))
        if len(timed) > 1:
            raise ValueError(f"RecDataset {name!r}: some interactions have a timestamp and some do not.")
        for user, seq in events.items():
            seq.sort(key=lambda event: event[0])  # stable: ties keep file order
            if drop_duplicates:
                seen: set[str] = set()
                events[user] = [e for e in seq if not (e[1] in seen or seen.add(e[1]))]
        events = _k_core(events, min_user_interactions, min_item_interactions)
        if not events:
            raise ValueError(
                f"RecDataset {name!r}: no user is left after the {min_user_interactions}/{min_item_interactions} "
                "user/item core filter."
            )
        sequences = {user: [item for _, item in seq] for user, seq in events.items()}
        stamps = {user: [t for t, _ in seq] for user, seq in events.items()} if timed == {True} else None
        seen = dict.fromkeys(item for seq in sequences.values() for item in seq)
        # Metadata order first (MovieLens rows then follow movie ids), then items without metadata.
        item_ids = [item for item in (item_info or {}) if item in seen]
        item_ids += [item for item in seen if item not in (item_info or {})]
        return cls.from_sequences(name, sequences, item_ids=item_ids, item_info=item_info, timestamps=stamps)

    def with_item_column(self, column: str, values: Sequence[Any]) -> RecDataset:
        """A copy whose `items[column]` is replaced by `values` (one per item row)."""
        if len(values) != self.num_items:
            raise ValueError(f"{column}: got {len(values)} values for {self.num_items} items.")
        items = self.items.remove_columns(column).add_column(column, list(values), feature=ITEM_FEATURES[column])
        return RecDataset(self.name, items.select_columns(list(ITEM_FEATURES)), self.sequences)

    # ----- persistence (Arrow + JSON, no pickle) --------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Writes `items/`, `sequences/` (Arrow) and `rec_dataset.json` under `directory`."""
        directory = Path(directory)
        self.items.save_to_disk(str(directory / "items"))
        self.sequences.save_to_disk(str(directory / "sequences"))
        (directory / "rec_dataset.json").write_text(json.dumps({"name": self.name, **self.statistics()}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> RecDataset:
        """Reads a dataset written by `save`."""
        directory = Path(directory)
        info = json.loads((directory / "rec_dataset.json").read_text())
        return cls(
            info["name"],
            datasets.load_from_disk(str(directory / "items")),
            datasets.load_from_disk(str(directory / "sequences")),
        )


def _k_core(events: dict[str, list[tuple[int, str]]], min_user: int, min_item: int) -> dict[str, list[tuple[int, str]]]:
    """Drops users and items with fewer interactions than the minimums, repeating until nothing changes."""
    while True:
        item_counts = Counter(item for seq in events.values() for _, item in seq)
        rare_items = {item for item, n in item_counts.items() if n < min_item}
        if rare_items:
            events = {user: [e for e in seq if e[1] not in rare_items] for user, seq in events.items()}
        short_users = [user for user, seq in events.items() if len(seq) < max(min_user, 1)]
        for user in short_users:
            del events[user]
        if not rare_items and not short_users:
            return events


__all__ = ["ITEM_FEATURES", "ItemInfo", "RecDataset", "columns_to_dataset", "compose_text"]
