"""Train / validation / test samples from a `RecDataset`: leave-one-out per user, a split by users (LLaRA's
protocol), or the split the data files give (a `split` column of the sequences), with fixed evaluation candidates
(the protocol and its reasons: docs/design.md, "Evaluation protocol")."""

from __future__ import annotations

import json
from dataclasses import dataclass

import datasets
import numpy as np

from .candidates import CandidateSampler, sample_rng
from .rec_dataset import RecDataset, columns_to_dataset

# Each strategy, and its evaluation targets in words (the model card's).
STRATEGY_TARGETS = {
    "leave_one_out": "leave-one-out targets (each user's last item)",
    "user": "the last item of each held-out user",
    "given": "the last item of each evaluation sequence the dataset's files give",
}
STRATEGIES = tuple(STRATEGY_TARGETS)
# The sequences' column that names each sequence's split under the "given" strategy, and its values.
SPLIT_COLUMN, SPLIT_NAMES = "split", ("train", "validation", "test")
# Random streams of the evaluation candidates; training epochs use streams 0, 1, 2, ...
VALIDATION_STREAM, TEST_STREAM = 2**32 + 1, 2**32 + 2


@dataclass(frozen=True)
class _UserPlan:
    """Which positions of one user's sequence are training, validation and test targets."""

    train_end: int  # items [0, train_end) are the training part
    validation: int | None
    test: int | None
    train_from: int = 0  # training targets are the positions [max(train_from, min_history), train_end)


def _resolve_strategy(rec: RecDataset, strategy: str | None) -> str:
    """`strategy`, or for None the dataset's own: `"given"` when its sequences have a `split` column (a LLaRA
    folder's files), else `"leave_one_out"`."""
    if strategy is None:
        return "given" if SPLIT_COLUMN in rec.sequences.column_names else "leave_one_out"
    return strategy


def _plans(rec: RecDataset, strategy: str, min_history: int, seed: int, user_fractions: tuple[float, float, float]):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1 (an empty history cannot be a sample), got {min_history}.")
    lengths = [len(seq) for seq in rec.sequences["items"][:]]
    if strategy == "leave_one_out":
        plans = []
        for n in lengths:
            test = n - 1 if n - 1 >= min_history else None
            validation = n - 2 if test is not None and n - 2 >= min_history else None
            plans.append(_UserPlan(next(p for p in (validation, test, n) if p is not None), validation, test))
        return plans
    if strategy == "given":
        return _given_plans(rec, lengths, min_history)
    if len(user_fractions) != 3 or abs(sum(user_fractions) - 1) > 1e-6 or min(user_fractions) < 0:
        raise ValueError(f"user_fractions must be three non-negative numbers summing to 1, got {user_fractions}.")
    order = np.random.default_rng(seed).permutation(len(lengths))
    group = np.empty(len(lengths), dtype=np.int64)
    bounds = np.round(np.cumsum(user_fractions) * len(lengths)).astype(int)
    group[order] = np.searchsorted(bounds, np.arange(len(lengths)), side="right")
    plans = []
    for n, g in zip(lengths, group):
        last = n - 1 if n - 1 >= min_history else None
        plans.append(_UserPlan(n if g == 0 else 0, last if g == 1 else None, last if g == 2 else None))
    return plans


def _given_plans(rec: RecDataset, lengths: list[int], min_history: int) -> list[_UserPlan]:
    """One sample per sequence, its last item the target, in the split its `split` column names. A training
    sequence gives only that sample, not every prefix: LLaRA's training windows already slide over each user."""
    if SPLIT_COLUMN not in rec.sequences.column_names:
        raise ValueError(f"strategy 'given' needs a {SPLIT_COLUMN!r} column in the sequences of {rec.name!r}.")
    plans = []
    for user, name, n in zip(rec.sequences["user_id"][:], rec.sequences[SPLIT_COLUMN][:], lengths):
        if name not in SPLIT_NAMES:
            raise ValueError(f"RecDataset {rec.name!r}: user {user!r} has split {name!r}, not one of {SPLIT_NAMES}.")
        last = n - 1 if n - 1 >= min_history else None
        if name == "train":
            plans.append(_UserPlan(n, None, None, train_from=n - 1))
        else:
            plans.append(_UserPlan(0, last if name == "validation" else None, last if name == "test" else None))
    return plans


def training_sequences(
    rec: RecDataset,
    strategy: str | None = None,
    seed: int = 0,
    min_history: int = 1,
    user_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    holdout: int = 0,
) -> dict[str, list[int]]:
    """The training part of each user's sequence under the same split as `make_split` (arguments alike):
    what a collaborative model such as SASRec may be trained on without seeing validation or test targets.

    With `holdout=k`, the last `k` items of each training part are left out too (users left with fewer than two
    items are dropped): a SASRec trained on these has never been trained to predict those items, so its scores on
    them are as trustworthy as on test targets (see `last_training_rows`).
    """
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}.")
    plans = _plans(rec, _resolve_strategy(rec, strategy), min_history, seed, user_fractions)
    sequences = {
        user: seq[: plan.train_end - holdout]
        for user, seq, plan in zip(rec.sequences["user_id"][:], rec.sequences["items"][:], plans)
        if plan.train_end > 0
    }
    return {user: seq for user, seq in sequences.items() if len(seq) >= (2 if holdout else 1)}


def last_training_rows(train: datasets.Dataset) -> datasets.Dataset:
    """Each user's last training sample (`make_split`'s `train` rows, whose prefixes grow in order per user): the
    targets that `training_sequences(..., holdout=1)` leaves out."""
    users = train["user_id"][:]
    last = [i for i in range(len(users)) if i + 1 == len(users) or users[i + 1] != users[i]]
    return train.select(last)


def make_split(
    rec: RecDataset,
    strategy: str | None = None,
    num_candidates: int | None = 20,
    seed: int = 0,
    min_history: int = 1,
    max_history_len: int = 20,
    user_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> datasets.DatasetDict:
    """Builds the training, validation and test samples, with fixed evaluation candidates.

    Args:
        strategy: `"leave_one_out"`: per user, the last item is the test target, the second last the
            validation target, and every earlier item with at least `min_history` items before it is a
            training target. `"user"`: users are split by `user_fractions` (train, validation, test); a
            validation or test user gives one sample (the last item), a training user all its prefixes.
            `"given"`: the sequences' `split` column names each sequence's split, and each sequence gives one
            sample, its last item the target (LLaRA's windows, read by `load_llara`). None: `"given"` when that
            column exists, else `"leave_one_out"`.
        num_candidates: size of the evaluation candidate sets (target included); None adds no candidates
            (full-ranking evaluation only).
        seed: fixes the evaluation candidates (and the user split); the same seed gives the same candidates.
        min_history: fewest history items a sample may have.
        max_history_len: histories keep their most recent `max_history_len` items.

    Returns:
        `DatasetDict` with `train`, `validation`, `test`. Columns: `user_id`, `history` (internal indices,
        oldest first), `target`; `candidates` (validation/test, shuffled, target once, no item the user ever
        interacted with as a negative); `history_timestamps` and `target_timestamp` when `rec` has timestamps.
        The split's parameters are stored as JSON in each split's `info.description`.

    Raises:
        ValueError: the catalog has fewer items than `num_candidates`, or a user has interacted with so many
            items that too few negatives remain (the message names the user).
    """
    if max_history_len < min_history:
        raise ValueError(f"max_history_len ({max_history_len}) must be >= min_history ({min_history}).")
    strategy = _resolve_strategy(rec, strategy)
    plans = _plans(rec, strategy, min_history, seed, user_fractions)
    sampler = CandidateSampler(rec.num_items, num_candidates) if num_candidates else None
    user_items = rec.user_items()
    timed = rec.has_timestamps
    users, sequences = rec.sequences["user_id"][:], rec.sequences["items"][:]
    stamps = rec.sequences["timestamps"][:] if timed else [None] * len(users)
    columns = {name: _empty_columns(timed) for name in ("train", "validation", "test")}

    def add(name: str, user: str, seq: list[int], times: list[int] | None, position: int) -> None:
        start = max(0, position - max_history_len)
        rows = columns[name]
        rows["user_id"].append(user)
        rows["history"].append(seq[start:position])
        rows["target"].append(seq[position])
        if times is not None:
            rows["history_timestamps"].append(times[start:position])
            rows["target_timestamp"].append(times[position])

    for user, seq, times, plan in zip(users, sequences, stamps, plans):
        for position in range(max(min_history, plan.train_from), plan.train_end):
            add("train", user, seq, times, position)
        for name, position in (("validation", plan.validation), ("test", plan.test)):
            if position is None:
                continue
            add(name, user, seq, times, position)
            if sampler is not None:
                stream = VALIDATION_STREAM if name == "validation" else TEST_STREAM
                try:
                    candidates = sampler.sample(seq[position], user_items[user], sample_rng(seed, stream, user))
                except ValueError as error:
                    raise ValueError(f"User {user!r}: {error}") from None
                columns[name]["candidates"].append(candidates)

    description = json.dumps(
        {
            "dataset": rec.name,
            "strategy": strategy,
            "num_candidates": num_candidates,
            "seed": seed,
            "min_history": min_history,
            "max_history_len": max_history_len,
            **({"user_fractions": list(user_fractions)} if strategy == "user" else {}),
        }
    )
    splits = {}
    for name, rows in columns.items():
        if name == "train" or sampler is None:
            rows.pop("candidates")
        splits[name] = columns_to_dataset(rows, datasets.Features({key: _FEATURES[key] for key in rows}), description)
    return datasets.DatasetDict(splits)


_INT_LIST = datasets.List(datasets.Value("int64"))
_FEATURES = {
    "user_id": datasets.Value("string"),
    "history": _INT_LIST,
    "target": datasets.Value("int64"),
    "candidates": _INT_LIST,
    "history_timestamps": _INT_LIST,
    "target_timestamp": datasets.Value("int64"),
}


def _empty_columns(timed: bool) -> dict[str, list]:
    names = ["user_id", "history", "target", "candidates"]
    if timed:
        names += ["history_timestamps", "target_timestamp"]
    return {name: [] for name in names}


__all__ = ["SPLIT_COLUMN", "STRATEGIES", "STRATEGY_TARGETS", "last_training_rows", "make_split", "training_sequences"]
