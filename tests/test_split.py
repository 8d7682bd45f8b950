"""make_split, training_sequences and candidate sampling on hand-made sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.data import DataLoader

from speeder_hf.data import (
    CandidateSampler,
    CandidateSamplingDataset,
    RecDataset,
    last_training_rows,
    make_split,
    sample_rng,
    training_sequences,
)


def rec_of(sequences: dict[str, list[int]], num_items: int, timestamps: bool = False) -> RecDataset:
    ids = [str(i) for i in range(num_items)]
    stamps = {u: [10 * t for t in range(len(s))] for u, s in sequences.items()} if timestamps else None
    return RecDataset.from_sequences(
        "toy", {u: [str(i) for i in s] for u, s in sequences.items()}, item_ids=ids, timestamps=stamps
    )


def test_leave_one_out_samples():
    rec = rec_of({"u": [0, 1, 2, 3, 4], "v": [5, 6], "w": [7]}, num_items=30)
    split = make_split(rec, num_candidates=5, max_history_len=3)
    train, validation, test = split["train"], split["validation"], split["test"]
    # u: train targets 1, 2 (histories [0], [0, 1]); validation 3; test 4 with history truncated to 3
    assert train.to_dict() == {"user_id": ["u", "u"], "history": [[0], [0, 1]], "target": [1, 2]}
    assert validation["user_id"][:] == ["u"] and validation[0]["history"] == [0, 1, 2] and validation[0]["target"] == 3
    # v has two items: only a test sample; w has one item: no sample at all
    assert test["user_id"][:] == ["u", "v"]
    assert test[0]["history"] == [1, 2, 3] and test[0]["target"] == 4
    assert test[1]["history"] == [5] and test[1]["target"] == 6
    assert json.loads(test.info.description)["strategy"] == "leave_one_out"


def test_min_history_and_training_sequences_agree():
    rec = rec_of({"u": list(range(8)), "v": [8, 9, 10]}, num_items=30)
    split = make_split(rec, num_candidates=None, min_history=2)
    assert [len(h) for h in split["train"]["history"][:]] == [2, 3, 4, 5]
    assert split["validation"]["user_id"][:] == ["u"]  # v: its validation history would have 1 item
    assert split["test"]["user_id"][:] == ["u", "v"]
    assert "candidates" not in split["test"].column_names
    train = training_sequences(rec, min_history=2)
    assert train == {"u": list(range(6)), "v": [8, 9]}
    for row in list(split["validation"]) + list(split["test"]):
        assert row["target"] not in train[row["user_id"]]


def test_candidates_are_valid_fixed_and_independent_of_other_users():
    sequences = {f"u{k}": [k, k + 10, k + 20, k + 30] for k in range(10)}
    rec = rec_of(sequences, num_items=60)
    split = make_split(rec, num_candidates=8, seed=3)
    for name in ("validation", "test"):
        for row in split[name]:
            cands = row["candidates"]
            assert len(cands) == 8 and len(set(cands)) == 8
            assert cands.count(row["target"]) == 1
            assert not (set(cands) - {row["target"]}) & set(sequences[row["user_id"]])
    again = make_split(rec, num_candidates=8, seed=3)
    assert again["test"]["candidates"][:] == split["test"]["candidates"][:]
    other_seed = make_split(rec, num_candidates=8, seed=4)
    assert other_seed["test"]["candidates"][:] != split["test"]["candidates"][:]
    # dropping a user leaves everybody else's candidates unchanged
    fewer = make_split(rec_of({u: s for u, s in sequences.items() if u != "u0"}, 60), num_candidates=8, seed=3)
    assert fewer["test"]["candidates"][:] == split["test"]["candidates"][1:]
    # the target sits at different positions (shuffled)
    positions = {row["candidates"].index(row["target"]) for row in split["test"]}
    assert len(positions) > 1


def test_timestamps_follow_the_samples():
    rec = rec_of({"u": [0, 1, 2, 3]}, num_items=30, timestamps=True)
    row = make_split(rec, num_candidates=5)["test"][0]
    assert row["history_timestamps"] == [0, 10, 20] and row["target_timestamp"] == 30


def test_user_strategy_partitions_users():
    sequences = {f"u{k}": [k, k + 1, k + 2] for k in range(20)}
    rec = rec_of(sequences, num_items=40)
    split = make_split(rec, strategy="user", num_candidates=5, user_fractions=(0.6, 0.2, 0.2), seed=1)
    train_users = set(split["train"]["user_id"][:])
    validation_users, test_users = set(split["validation"]["user_id"][:]), set(split["test"]["user_id"][:])
    assert (len(train_users), len(validation_users), len(test_users)) == (12, 4, 4)
    assert not train_users & validation_users and not train_users & test_users and not validation_users & test_users
    assert all(len(h) == 2 for h in split["test"]["history"][:])
    assert set(training_sequences(rec, "user", seed=1, user_fractions=(0.6, 0.2, 0.2))) == train_users
    with pytest.raises(ValueError, match="user_fractions must be three non-negative numbers summing to 1"):
        make_split(rec, strategy="user", user_fractions=(0.5, 0.5, 0.5))


def test_bad_requests_raise_clear_errors():
    rec = rec_of({"u": [0, 1, 2, 3], "v": [4, 5, 6]}, num_items=8)
    with pytest.raises(ValueError, match="20 candidates were requested but the catalog has only 8 items"):
        make_split(rec)
    with pytest.raises(ValueError, match="User 'u': Only 4 items are outside"):
        make_split(rec, num_candidates=6)
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_split(rec, strategy="random")
    with pytest.raises(ValueError, match="min_history must be >= 1"):
        make_split(rec, min_history=0)


def test_sampler_is_uniform_and_handles_crowded_catalogs():
    sampler = CandidateSampler(num_items=10, num_candidates=3)
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(4000):
        cands = sampler.sample(0, {1, 2}, rng)
        assert sorted(cands)[0] == 0 and len(set(cands)) == 3 and not {1, 2} & set(cands)
        counts[cands] += 1
    # each of the 7 allowed negatives is drawn with probability 2/7
    assert np.allclose(counts[3:] / 4000, 2 / 7, atol=0.03) and counts[1] == counts[2] == 0
    crowded = CandidateSampler(num_items=6, num_candidates=3)
    assert sorted(crowded.sample(0, {1, 2, 3}, rng)) == [0, 4, 5]
    with pytest.raises(KeyError, match="Target item index 6 is outside the catalog"):
        crowded.sample(6, set(), rng)


def test_training_candidates_change_per_epoch_and_are_reproducible():
    rec = rec_of({f"u{k}": [k, k + 1, k + 2, k + 3, k + 4] for k in range(5)}, num_items=50)
    split = make_split(rec, num_candidates=6)
    data = CandidateSamplingDataset(split["train"], rec, num_candidates=6, seed=0)
    first = [data[i]["candidates"] for i in range(len(data))]
    for i, cands in enumerate(first):
        row = split["train"][i]
        assert cands.count(row["target"]) == 1 and not (set(cands) - {row["target"]}) & rec.user_items()[row["user_id"]]
    assert [data[i]["candidates"] for i in range(len(data))] == first
    data.set_epoch(1)
    assert [data[i]["candidates"] for i in range(len(data))] != first
    assert data[2]["candidates"] == CandidateSampler(50, 6).sample(
        split["train"][2]["target"], rec.user_items()[split["train"][2]["user_id"]], sample_rng(0, 1, 2)
    )
    batch = next(iter(DataLoader(data, batch_size=len(data), collate_fn=list)))
    with pytest.raises(KeyError, match="user 'u0' is not in the RecDataset"):
        CandidateSamplingDataset(split["train"], rec_of({"x": [1, 2]}, num_items=50), num_candidates=6)[0]
    assert [row["candidates"] for row in batch] == [data[i]["candidates"] for i in range(len(data))]


def test_held_out_training_targets_are_exactly_what_the_held_out_sequences_leave_out():
    rec = rec_of({"u": [0, 1, 2, 3, 4, 5], "v": [6, 7, 8, 9], "w": [10, 11, 12]}, num_items=30)
    split = make_split(rec, num_candidates=5)
    full, held_out = training_sequences(rec), training_sequences(rec, holdout=1)
    # v's training part [6, 7] keeps one item: too short to train on, so v is dropped; w has one training item
    assert full == {"u": [0, 1, 2, 3], "v": [6, 7], "w": [10]} and held_out == {"u": [0, 1, 2]}
    last = last_training_rows(split["train"])
    assert last.to_dict() == {"user_id": ["u", "v"], "history": [[0, 1, 2], [6]], "target": [3, 7]}
    for row in last:  # the target is the item the held-out sequence lacks, and the history is all it has
        assert full[row["user_id"]][-1] == row["target"] and full[row["user_id"]][:-1] == row["history"]
    with pytest.raises(ValueError, match="holdout must be >= 0"):
        training_sequences(rec, holdout=-1)


def test_given_strategy_reads_each_sequence_split_from_its_column():
    rec = rec_of({"a": [0, 1, 2], "b": [3, 4], "c": [5, 6, 7], "d": [8]}, num_items=30)
    rec = RecDataset(rec.name, rec.items, rec.sequences.add_column("split", ["train", "validation", "test", "train"]))
    split = make_split(rec, num_candidates=5)  # the column makes "given" the default
    assert split["train"].to_dict() == {"user_id": ["a"], "history": [[0, 1]], "target": [2]}  # no prefixes; d: 1 item
    assert split["validation"]["history"][:] == [[3]] and split["test"]["target"][:] == [7]
    assert json.loads(split["test"].info.description)["strategy"] == "given"
    assert make_split(rec, num_candidates=5, min_history=2)["validation"]["user_id"][:] == []
    assert training_sequences(rec) == {"a": [0, 1, 2], "d": [8]}
    assert training_sequences(rec, holdout=1) == {"a": [0, 1]}
    assert len(make_split(rec, strategy="leave_one_out", num_candidates=5)["test"]) == 3  # still choosable
    with pytest.raises(ValueError, match="strategy 'given' needs a 'split' column"):
        make_split(rec_of({"a": [0, 1]}, num_items=30), strategy="given")
    bad = RecDataset(rec.name, rec.items, rec.sequences.remove_columns("split").add_column("split", ["dev"] * 4))
    with pytest.raises(ValueError, match="user 'a' has split 'dev', not one of"):
        make_split(bad)
