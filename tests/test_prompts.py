"""Prompt rendering: golden strings per style, slots and recency, history clipping, shuffling, bad input."""

from __future__ import annotations

import pytest

from speeder_hf import SpeederConfig
from speeder_hf.processing.prompts import PromptBuilder

TITLES = ["lipstick red", "mascara", "shampoo", "soap", "cream", "brush", "nail  polish\npink", None]
TEXTS = ["lipstick red. makeup, lips", None, "shampoo. hair", None, None, None, None, None]
HISTORY, CANDIDATES, TARGET = [0, 1, 2], [3, 4, 5], 4


def builder(prompt_style="speeder", answer_mode="index", hybrid=True, **config_kwargs):
    config = SpeederConfig(**{"max_history_len": 4, "num_candidates": 3, **config_kwargs})
    return PromptBuilder(config, TITLES, TEXTS, prompt_style=prompt_style, answer_mode=answer_mode, hybrid=hybrid)


def test_speeder_index_golden():
    r = builder().render(HISTORY, CANDIDATES, TARGET)
    assert r.prompt == (
        "A user interacted with these items, oldest first:<|pos_1|><item><|pos_2|><item><|pos_3|><item>.\n"
        "Which item will the user interact with next? Candidates: A<item> B<item> C<item>.\nAnswer:"
    )
    assert r.answer == " B"
    assert r.slot_items == [0, 1, 2, 3, 4, 5]
    assert r.slot_recency == [3, 2, 1, 0, 0, 0]
    assert (r.history, r.candidates, r.target_index) == (HISTORY, CANDIDATES, 1)


def test_speeder_without_absolute_positions_and_two_tokens_per_item():
    r = builder(spae_absolute=False, num_item_tokens=2).render([0, 1], [3, 4], 3)
    assert r.prompt == (
        "A user interacted with these items, oldest first:<item><item>,<item><item>.\n"
        "Which item will the user interact with next? Candidates: A<item><item> B<item><item>.\nAnswer:"
    )
    assert r.slot_items == [0, 1, 3, 4]  # one id per item, whatever num_item_tokens
    assert r.answer == " A"


def test_speeder_title_answer_is_the_title():
    r = builder(answer_mode="title").render(HISTORY, [3, 6], 6)
    assert r.prompt.endswith("Candidates:<item>,<item>.\nAnswer:")
    assert r.answer == " nail polish pink"  # whitespace collapsed


def test_llara_hybrid_and_text_only_golden():
    r = builder("llara", "title").render(HISTORY, CANDIDATES, TARGET)
    assert r.prompt == (
        "This user has interacted with lipstick red <item>, mascara <item>, shampoo <item> in the previous. "
        "Please predict the next item this user will interact with. Choose the answer from the following 3 "
        "candidates: soap <item>, cream <item>, brush <item>. Answer:"
    )
    assert r.answer == " cream"
    assert r.slot_items == [0, 1, 2, 3, 4, 5] and r.slot_recency == [3, 2, 1, 0, 0, 0]

    r = builder("llara", "title", hybrid=False).render(HISTORY, CANDIDATES, TARGET)
    assert "<item>" not in r.prompt and "lipstick red, mascara, shampoo in the previous" in r.prompt
    assert r.slot_items == [] and r.slot_recency == []


def test_text_style_golden_uses_full_text_with_title_fallback():
    r = builder("text", "title").render(HISTORY, CANDIDATES, TARGET)
    assert r.prompt == (
        "A user interacted with these items, oldest first:\nlipstick red. makeup, lips\nmascara\nshampoo. hair\n"
        "Which item will the user interact with next? Candidates: soap, cream, brush.\nAnswer:"
    )
    assert r.answer == " cream" and r.slot_items == []


def test_titled_styles_label_candidates_in_index_mode():
    r = builder("llara", "index").render(HISTORY, CANDIDATES, TARGET)
    assert "candidates: (A) soap <item>, (B) cream <item>, (C) brush <item>. Answer:" in r.prompt
    assert r.answer == " B"


def test_history_keeps_the_most_recent_items_and_positions_restart_at_one():
    r = builder().render([0, 1, 2, 3, 4, 5], [6, 2], 6)  # max_history_len = 4
    assert r.history == [2, 3, 4, 5]
    assert r.slot_items == [2, 3, 4, 5, 6, 2] and r.slot_recency == [4, 3, 2, 1, 0, 0]
    assert "first:<|pos_1|><item><|pos_2|><item><|pos_3|><item><|pos_4|><item>." in r.prompt


def test_shuffle_is_deterministic_per_seed_and_follows_the_target():
    b = builder(num_candidates=6)
    candidates = [0, 1, 2, 3, 4, 5]
    orders = {tuple(b.render([6], candidates, 2, shuffle_seed=seed).candidates) for seed in range(8)}
    assert len(orders) > 1
    for seed in range(8):
        r = b.render([6], candidates, 2, shuffle_seed=seed)
        assert r == b.render([6], candidates, 2, shuffle_seed=seed)
        assert sorted(r.candidates) == candidates and r.candidates[r.target_index] == 2
        assert r.answer == " " + "ABCDEF"[r.target_index]
        assert r.slot_items[1:] == r.candidates
    assert b.render([6], candidates, 2).candidates == candidates


@pytest.mark.parametrize(
    ("history", "candidates", "target", "match"),
    [
        ([], [3, 4], 3, "Empty history"),
        ([0], [3, 4, 3], 3, r"Duplicate candidates \[3\]"),
        ([0], [3, 4], 5, "Target item 5 is not among the candidates"),
        ([0, 42], [3, 4], 3, "Unknown item index 42: the catalog has 8 items"),
        ([0], [3, -1], 3, "Unknown item index -1"),
        ([0], [0, 1, 2, 3, 4], 3, "5 candidates but only 3 label tokens"),
    ],
)
def test_bad_samples_raise(history, candidates, target, match):
    with pytest.raises(ValueError, match=match):
        builder().render(history, candidates, target)


def test_missing_title_raises_naming_the_item():
    with pytest.raises(ValueError, match="Item 7 has no title"):
        builder("llara", "title").render([7], CANDIDATES, TARGET)
    with pytest.raises(ValueError, match="Item 7 has no title"):
        builder("speeder", "title").render([0], [3, 7], 3)  # title answers need every candidate's title
    assert builder().render([7], [3, 4], 3).slot_items == [7, 3, 4]  # speeder index prompts need no title


def test_title_with_reserved_token_raises():
    config = SpeederConfig(max_history_len=4, num_candidates=3)
    b = PromptBuilder(config, ["soap <item>", "cream", "brush"], prompt_style="llara", answer_mode="title")
    with pytest.raises(ValueError, match="item 0 contains the reserved token '<item>'"):
        b.render([0], [1, 2], 1)
