"""Title answers constrained to the candidates: the trie, the logits processor in `generate`, and title
log-likelihood scoring against brute-force full forward passes, one candidate at a time; `collect_outcomes` with
`constrain_to_candidates` batched against one row at a time."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_speeder, tiny_tokenizer
from transformers import LogitsProcessorList

from speeder_hf import SpeederForSequentialRec
from speeder_hf.evaluation.ranking import RankingOutcomes, collect_outcomes, evaluate_ranking
from speeder_hf.evaluation.title_answers import (
    TitleTrie,
    TitleTrieLogitsProcessor,
    score_title_answers,
    title_answer_ids,
)
from speeder_hf.processing.collator import SpeederDataCollator

NOUNS = "lipstick mascara shampoo soap cream brush nail gel oil mask".split()
COLORS = "red blue green".split()
TITLES = [f"{noun} {color}" for color in COLORS for noun in NOUNS]  # 30 titles, one per catalog row
TITLES[10] = "lipstick"  # a prefix of item 20's title, "lipstick green" (and of item 0's)
TITLES[12] = TITLES[13] = "shampoo  blue"  # the same title twice (written with a double space once: normalised)
ROWS = [
    {"user_id": f"u{i}", "history": history, "candidates": candidates, "target": candidates[t]}
    for i, (history, candidates, t) in enumerate(
        [
            ([0, 1, 2], [10, 20, 12, 13, 0], 0),  # the target's title is a prefix of two others
            ([5], [20, 21, 22, 10, 24], 0),  # the target's title extends another's
            (list(range(12)), [25, 26, 27, 28, 29], 3),
            ([3, 4, 5, 6, 7, 8, 9], [13, 16, 12, 18, 19], 0),  # the target shares its title with a negative
            ([29, 28], [0, 1, 2, 3, 4], 3),
            ([1, 3, 5, 7, 9, 11], [12, 14, 16, 18, 20], 2),
            ([2, 4], [6, 8, 10, 12, 14], 4),
        ]
    )
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_and_tokenizer(request):
    # gpt2 has learned absolute positions, so it checks the position ids under left padding (RoPE would hide them).
    return tiny_speeder(request.param)


def eval_batch(model, tokenizer, rows, **collator_kwargs):
    collator = SpeederDataCollator(
        tokenizer, model.config, item_titles=TITLES, mode="eval", answer_mode="title", **collator_kwargs
    )
    batch = collator(rows)
    meta = SpeederDataCollator.pop_metadata(batch)
    answers = [[title_answer_ids(tokenizer, TITLES[item]) for item in row.tolist()] for row in meta["candidate_items"]]
    return batch, meta, answers


@torch.no_grad()
def brute_force_log_likelihood(model, batch, row, answer):
    """Sum of the answer's log-probabilities from one full forward pass of this row's unpadded prompt + answer."""
    real = batch["attention_mask"][row].bool()
    prompt = batch["input_ids"][row, real]
    slots_before = int((batch["input_ids"][:row] == model.config.item_token_id).sum()) // model.config.num_item_tokens
    slots = int((prompt == model.config.item_token_id).sum()) // model.config.num_item_tokens
    items = {key: batch[key][slots_before : slots_before + slots] for key in ("item_ids", "item_recency")}
    ids = torch.cat([prompt, torch.tensor(answer)]).unsqueeze(0)
    log_probs = model(input_ids=ids, **items).logits[0].float().log_softmax(-1)  # (S + L, V)
    positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer))
    return float(log_probs[positions, torch.tensor(answer)].sum())


def test_answer_ids_are_the_trained_answer_tokens():
    model, tokenizer = tiny_speeder()
    collator = SpeederDataCollator(tokenizer, model.config, item_titles=TITLES, mode="train", answer_mode="title")
    for row in ROWS:
        labels = collator([row])["labels"][0]
        assert labels[labels != -100].tolist() == title_answer_ids(tokenizer, TITLES[row["target"]])
    assert title_answer_ids(tokenizer, TITLES[12]) == title_answer_ids(tokenizer, "shampoo blue")
    assert title_answer_ids(tokenizer, "soap")[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="Empty title"):
        title_answer_ids(tokenizer, "  ")


def test_trie_keeps_prefix_titles_and_duplicates_apart():
    tokenizer = tiny_tokenizer()
    answers = [title_answer_ids(tokenizer, TITLES[item]) for item in ROWS[0]["candidates"]]
    lipstick, eos = tokenizer.convert_tokens_to_ids(["lipstick", "<eos>"])
    red, green = tokenizer.convert_tokens_to_ids(["red", "green"])
    trie = TitleTrie(answers)
    assert trie.allowed([lipstick]) == sorted([eos, green, red])  # "lipstick" ends here or goes on
    assert trie.candidates([lipstick, eos]) == [0]
    assert trie.candidates([lipstick, green, eos]) == [1]
    assert trie.candidates(answers[2]) == [2, 3]  # the shared title names both
    assert trie.candidates([lipstick]) == [] and trie.allowed(answers[0]) == []
    assert trie.max_length == 3
    with pytest.raises(ValueError, match="do not start any candidate"):
        trie.allowed([green])


def test_log_likelihoods_match_full_forward_per_candidate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch, meta, answers = eval_batch(model, tokenizer, ROWS)
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    # 5 continuations per row in passes of at most 3: rows split into passes
    scores = score_title_answers(model, answers, max_sequences=3, **batch)
    expected = torch.tensor(
        [[brute_force_log_likelihood(model, batch, b, a) for a in row] for b, row in enumerate(answers)]
    )
    assert scores.log_likelihoods.shape == (len(ROWS), 5)
    torch.testing.assert_close(scores.log_likelihoods, expected, atol=1e-4, rtol=1e-5)
    # the shared title scores alike in a row, and a prefix title differs from its extensions
    assert scores.log_likelihoods[0, 2] == pytest.approx(scores.log_likelihoods[0, 3].item(), abs=1e-5)
    # one chunk or one continuation per pass: the same scores
    whole = score_title_answers(model, answers, **batch)
    single = score_title_answers(model, answers, max_sequences=1, **batch)
    torch.testing.assert_close(whole.log_likelihoods, scores.log_likelihoods, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single.log_likelihoods, scores.log_likelihoods, atol=1e-5, rtol=1e-5)
    right_batch, _, _ = eval_batch(model, tokenizer, ROWS, padding_side="right")
    right = score_title_answers(model, answers, **right_batch)
    torch.testing.assert_close(right.log_likelihoods, scores.log_likelihoods, atol=1e-5, rtol=1e-5)


def test_greedy_answer_is_what_generate_writes_within_the_trie(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch, meta, answers = eval_batch(model, tokenizer, ROWS)
    scores = score_title_answers(model, answers, **batch)
    tries = [TitleTrie(row) for row in answers]
    generated = model.generate(
        **batch,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max(trie.max_length for trie in tries),
        logits_processor=LogitsProcessorList([TitleTrieLogitsProcessor(tries, tokenizer.eos_token_id)]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # (B, T), new tokens only, padded after eos
    for b, (trie, tokens) in enumerate(zip(tries, generated.tolist())):
        answer = tokens[: tokens.index(tokenizer.eos_token_id) + 1]
        assert answer == scores.answers[b]
        assert trie.candidates(answer) == scores.picks[b] and scores.picks[b]  # always a candidate
    assert len({tuple(a) for a in scores.answers}) > 1  # not vacuous: rows answer differently


def test_constrained_outcomes_batched_equal_one_row_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    options = {"answer_mode": "title", "constrain_to_candidates": True, "show_progress": False}
    batched = collect_outcomes(model, tokenizer, ROWS, TITLES, batch_size=3, num_examples=2, **options)
    single = collect_outcomes(model, tokenizer, ROWS, TITLES, batch_size=1, **options)
    assert batched.valid.all() and batched.constrained
    assert (batched.correct == single.correct).all() and (batched.ranks == single.ranks).all()

    # the ranks are the target's among brute-force log-likelihoods, ties against it
    ranks = []
    for row in ROWS:
        batch, meta, answers = eval_batch(model, tokenizer, [row])
        values = [brute_force_log_likelihood(model, batch, 0, a) for a in answers[0]]
        target = values[meta["target_index"].item()]
        ranks.append(sum(v >= target - 1e-5 for v in values) - 1)
    assert batched.ranks.tolist() == ranks
    assert batched.ranks[3] >= 1 and not batched.correct[3]  # the target shares its title: a tie, never a hit
    assert len(set(ranks)) > 1

    result = batched.summary()
    assert result["ValidRatio"] == 1.0 and result["VHR@1"] == result["HR@1"] == batched.correct.mean()
    assert {"HR@5", "NDCG@5", "NDCG@10", "MRR"} <= set(result)
    assert "constrained to the candidates' titles" in result["protocol"]
    assert [set(e) for e in result["examples"]] == [{"generated", "target_title", "valid", "correct"}] * 2
    assert all(e["generated"].strip() in [" ".join(t.split()) for t in TITLES] for e in result["examples"])

    restored = RankingOutcomes.from_dict(json.loads(json.dumps(batched.to_dict())))
    assert restored.summary() == result
    free = collect_outcomes(model, tokenizer, ROWS[:2], TITLES, answer_mode="title", max_new_tokens=2,
                            show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="different protocols"):
        RankingOutcomes.concatenate([batched, free])


def test_constrained_answers_are_valid_on_a_random_model_with_titled_prompts():
    model, tokenizer = tiny_speeder(prompt_style="llara")
    result = evaluate_ranking(
        model, tokenizer, ROWS, TITLES, answer_mode="title", constrain_to_candidates=True, batch_size=4,
        show_progress=False,
    )  # fmt: skip
    assert result["ValidRatio"] == 1.0 and result["prompt_style"] == "llara"


def test_sliding_window_cache_scores_like_full_forward():
    # Gemma 3 (one of the baselines' backbones) caches only a window in most layers; prompts exceed the window here.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    tokenizer = tiny_tokenizer()
    model = SpeederForSequentialRec.from_llm(
        Gemma3ForCausalLM(config), tokenizer, modalities=["id"], modality_dims=[8], mrc_hidden_size=16,
        gate_hidden_size=8, max_history_len=8, num_candidates=5,
    ).eval()  # fmt: skip
    model.set_item_features({"id": torch.randn(30, 8)}, torch.ones(30, 1, dtype=torch.bool))
    batch, meta, answers = eval_batch(model, tokenizer, ROWS[:4])
    scores = score_title_answers(model, answers, max_sequences=7, **batch)
    expected = torch.tensor(
        [[brute_force_log_likelihood(model, batch, b, a) for a in row] for b, row in enumerate(answers)]
    )
    torch.testing.assert_close(scores.log_likelihoods, expected, atol=1e-4, rtol=1e-5)


def test_bad_constrained_input(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="constrain_to_candidates restricts title answers.*answer_mode='title'"):
        collect_outcomes(model, tokenizer, ROWS, TITLES, answer_mode="index", constrain_to_candidates=True)
    batch, meta, answers = eval_batch(model, tokenizer, ROWS[:2])
    with pytest.raises(ValueError, match="one list of candidate answers per prompt"):
        score_title_answers(model, answers[:1], **batch)
    with pytest.raises(ValueError, match="2 tries for a batch of 3"):
        TitleTrieLogitsProcessor([TitleTrie(a) for a in answers], 1)(torch.zeros(3, 0, dtype=torch.long),
                                                                        torch.zeros(3, 8))  # fmt: skip
