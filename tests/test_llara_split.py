"""LLaRA's MovieLens split rebuilt from the raw ratings: its validation and test users are held out of training."""

from __future__ import annotations

import json

import pytest

from benchmarks.llara_split import LlaraSplitArguments, build
from speeder_hf.data import load_dataset_by_name, make_split
from speeder_hf.data.reading import DataFormatError


def write_folder(root, windows):
    """Four users of twelve ratings each (movie ids 1..20, ratings 1..5, time in file order), a `u.item` of 20
    movies and the given `{file: [(user, end)]}` windows: the ten ratings before the user's `end`-th and that one."""
    ratings = {user: [(1 + (user * 7 + i * 3) % 20, 1 + (user + i) % 5) for i in range(12)] for user in range(1, 5)}
    # distinct movies per user, so each window's pairs are its user's alone
    ratings = {user: list(dict.fromkeys(seq)) for user, seq in ratings.items()}
    lines = [
        f"{user}\t{movie}\t{rating}\t{1000 + i}"
        for user, seq in ratings.items()
        for i, (movie, rating) in enumerate(seq)
    ]
    (root / "ml-100k_u.data").write_text("\n".join(lines) + "\n")
    (root / "u.item").write_text(
        "".join(f"{m}|Movie {m} (1995)|01-Jan-1995||url|" + "|".join(["0"] * 18) + "|1\n" for m in range(1, 21)),
        "latin-1",
    )
    for name, rows in windows.items():
        with (root / name).open("w") as out:
            for user, end in rows:
                seq = [[movie - 1, rating] for movie, rating in ratings[user][end - 10 : end]]
                movie, rating = ratings[user][end]
                out.write(json.dumps({"seq": seq, "len_seq": 10, "next": [movie - 1, rating]}) + "\n")
    return ratings


def test_held_out_users_leave_training_and_keep_their_windows(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    ratings = write_folder(data, {"Val_data.jsonl": [(2, 10)], "Test_data.jsonl": [(3, 11)]})
    summary = build(LlaraSplitArguments(out=tmp_path / "split", data_root=data))
    assert summary == {"training_users": 2, "validation_users": 1, "test_users": 1, "users_in_both": 0}
    trained = [json.loads(line) for line in (tmp_path / "split" / "train_data.jsonl").read_text().splitlines()]
    assert [[m + 1 for m, _ in row["seq"]] + [row["next"][0] + 1] for row in trained] == [
        [movie for movie, _ in ratings[user]] for user in (1, 4)
    ]
    rec = load_dataset_by_name(str(tmp_path / "split"))
    split = make_split(rec, num_candidates=5, seed=0)
    assert (len(split["train"]), len(split["validation"]), len(split["test"])) == (2, 1, 1)
    test = split["test"][0]
    assert rec.item_index[str(ratings[3][11][0])] == test["target"]


def test_a_window_no_user_holds_is_named(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    write_folder(data, {"Val_data.jsonl": [(2, 10)], "Test_data.jsonl": [(3, 11)]})
    lines = (data / "Test_data.jsonl").read_text().splitlines()
    window = json.loads(lines[0])
    window["next"] = [window["seq"][0][0], 5 if window["seq"][0][1] != 5 else 4]  # a rating the user never gave
    (data / "Test_data.jsonl").write_text(json.dumps(window) + "\n")
    with pytest.raises(DataFormatError, match=r"Test_data.jsonl.*line 1.*matches 0 users"):
        build(LlaraSplitArguments(out=tmp_path / "split", data_root=data))
