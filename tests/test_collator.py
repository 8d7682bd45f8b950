"""SpeederDataCollator: labels on the answer only, slots in placeholder order, padding sides, truncation by whole
items, metadata, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_speeder, tiny_tokenizer

from speeder_hf.processing.collator import IGNORE_INDEX, SpeederDataCollator, check_placeholders

NOUNS = "lipstick mascara shampoo soap cream brush nail gel oil mask".split()
COLORS = "red blue green".split()
TITLES = [f"{noun} {color}" for color in COLORS for noun in NOUNS]  # 30 titles, one per catalog row
ROWS = [
    {"user_id": "u0", "history": [0, 1, 2, 3, 4, 5], "candidates": [10, 11, 12, 13, 14], "target": 12},
    {"user_id": "u1", "history": [7], "candidates": [20, 21, 22, 23, 24], "target": 24},
    {"user_id": "u2", "history": list(range(12)), "candidates": [25, 26, 27, 28, 29], "target": 25},
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_speeder()


def collate(model_and_tokenizer, rows=ROWS, **kwargs):
    model, tokenizer = model_and_tokenizer
    return SpeederDataCollator(tokenizer, model.config, TITLES, **kwargs)(rows)


def real_tokens(batch, row):
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


def test_index_labels_cover_exactly_the_answer_token(model_and_tokenizer):
    model, _ = model_and_tokenizer
    batch = collate(model_and_tokenizer)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "item_ids", "item_recency"}
    for row, sample in enumerate(ROWS):
        labelled = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        last_real = int(batch["attention_mask"][row].sum()) - 1  # right padding
        assert labelled == [last_real]
        answer = model.config.label_token_ids[sample["candidates"].index(sample["target"])]
        assert batch["labels"][row, last_real] == batch["input_ids"][row, last_real] == answer
    assert torch.isfinite(model(**batch).loss)


def test_title_labels_are_the_title_and_eos_after_the_eval_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    train = collate(model_and_tokenizer, answer_mode="title")
    evaluation = collate(model_and_tokenizer, mode="eval", answer_mode="title")
    for row, sample in enumerate(ROWS):
        answer = tokenizer(" " + TITLES[sample["target"]], add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        labels = train["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == answer
        assert real_tokens(train, row) == real_tokens(evaluation, row) + answer
    with pytest.raises(ValueError, match="candidate label token"):  # the model's config says index answers
        model(**train)
    model.config.answer_mode = "title"
    try:
        assert torch.isfinite(model(**train).loss)
    finally:
        model.config.answer_mode = "index"  # the fixture is shared by the module


def test_padding_sides_and_eval_outputs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    train = collate(model_and_tokenizer)
    evaluation = collate(model_and_tokenizer, mode="eval")
    lengths = train["attention_mask"].sum(1)
    assert (lengths < train["input_ids"].shape[1]).any()  # some row is padded
    for row in range(len(ROWS)):
        n = int(lengths[row])
        assert train["attention_mask"][row, :n].all() and not train["attention_mask"][row, n:].any()
        assert (train["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        m = int(evaluation["attention_mask"][row].sum())
        assert evaluation["attention_mask"][row, -m:].all() and not evaluation["attention_mask"][row, :-m].any()
        assert real_tokens(evaluation, row) == real_tokens(train, row)[:-1]  # ends where the label would follow
    assert "labels" not in evaluation
    meta = SpeederDataCollator.pop_metadata(evaluation)
    assert set(evaluation) == {"input_ids", "attention_mask", "item_ids", "item_recency"}
    assert meta["candidate_items"].tolist() == [r["candidates"] for r in ROWS]
    assert meta["target_index"].tolist() == [2, 4, 0]
    assert meta["history_len"].tolist() == [6, 1, 12]  # as given, before clipping to max_history_len = 8
    scores = model.score_candidates(num_candidates=5, **evaluation)
    assert scores.shape == (3, 5) and torch.isfinite(scores).all()


@pytest.mark.parametrize("num_item_tokens", [1, 2])
def test_slots_follow_placeholder_order(num_item_tokens):
    model, tokenizer = tiny_speeder(num_item_tokens=num_item_tokens)
    batch = SpeederDataCollator(tokenizer, model.config, TITLES)(ROWS)
    placeholders = int((batch["input_ids"] == model.config.item_token_id).sum())
    assert placeholders == batch["item_ids"].numel() * num_item_tokens
    expected_items, expected_recency = [], []
    for sample in ROWS:
        kept = sample["history"][-model.config.max_history_len :]
        expected_items += kept + sample["candidates"]
        expected_recency += list(range(len(kept), 0, -1)) + [0] * len(sample["candidates"])
    assert batch["item_ids"].tolist() == expected_items
    assert batch["item_recency"].tolist() == expected_recency
    assert torch.isfinite(model(**batch).loss)


def test_truncation_drops_oldest_whole_items(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    row = ROWS[0]
    full = len(collate(model_and_tokenizer, [row])["input_ids"][0])
    # Each speeder history item is 2 tokens (<|pos_i|><item>): 3 tokens too many means dropping 2 items.
    batch = collate(model_and_tokenizer, [row], max_length=full - 3)
    ids = batch["input_ids"][0]
    assert len(ids) <= full - 3
    assert batch["item_ids"].tolist() == row["history"][-4:] + row["candidates"]
    assert batch["item_recency"].tolist() == [4, 3, 2, 1, 0, 0, 0, 0, 0]
    positions = [t for t in ids.tolist() if t in model.config.position_token_ids]
    assert positions == model.config.position_token_ids[:4]
    assert int((ids == model.config.item_token_id).sum()) == batch["item_ids"].numel()
    assert batch["labels"][0, -1] == model.config.label_token_ids[2]

    titled = collate(model_and_tokenizer, [row], prompt_style="llara", answer_mode="title")
    budget = len(titled["input_ids"][0]) - 1
    batch = collate(model_and_tokenizer, [row], prompt_style="llara", answer_mode="title", max_length=budget)
    assert batch["input_ids"].shape[1] <= budget
    assert batch["item_ids"].tolist() == row["history"][-5:] + row["candidates"]  # most items that fit

    with pytest.raises(ValueError, match="does not fit max_length=20: even its most recent history item"):
        collate(model_and_tokenizer, [row], max_length=20)


def test_shuffled_candidates_are_deterministic_and_labelled(model_and_tokenizer):
    model, _ = model_and_tokenizer
    first = collate(model_and_tokenizer, mode="eval", shuffle_seed=3)
    again = collate(model_and_tokenizer, mode="eval", shuffle_seed=3)
    assert torch.equal(first["candidate_items"], again["candidate_items"])
    assert first["candidate_items"].tolist() != [r["candidates"] for r in ROWS]
    for row, sample in enumerate(ROWS):
        assert first["candidate_items"][row, first["target_index"][row]] == sample["target"]
    train = collate(model_and_tokenizer, shuffle_seed=3, return_metadata=True)
    answers = train["labels"][train["labels"] != IGNORE_INDEX].tolist()
    assert answers == [model.config.label_token_ids[i] for i in first["target_index"].tolist()]


def test_bad_input_raises(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="Tokenizer and config disagree"):
        SpeederDataCollator(tiny_tokenizer(), model.config, TITLES)
    with pytest.raises(ValueError, match="mode must be one of"):
        SpeederDataCollator(tokenizer, model.config, TITLES, mode="test")
    bad = {"history": [3, 30], "candidates": [1, 2], "target": 1}
    with pytest.raises(ValueError, match="Unknown item index 30: the catalog has 30 items"):
        collate(model_and_tokenizer, [bad])
    with pytest.raises(ValueError, match="Empty history"):
        collate(model_and_tokenizer, [{"history": [], "candidates": [1, 2], "target": 1}])
    with pytest.raises(ValueError, match="same number of candidates"):
        collate(model_and_tokenizer, [ROWS[0], {**ROWS[1], "candidates": [20, 24]}], mode="eval")


def test_placeholder_count_mismatch_names_token_and_count():
    # The builder strips reserved tokens from titles, so only a tokenizer that splits or merges them gets here.
    with pytest.raises(ValueError, match=r"3 <item> placeholders, expected 4 \(2 items x 2\)"):
        check_placeholders([5, 9, 9, 9], "<item>", 9, n_items=2, per_item=2)
    check_placeholders([9, 5, 9], "<item>", 9, n_items=1, per_item=2)
