"""evaluate_ranking against brute-force computations, one sample at a time, from the model itself; outcomes of
parts of a split against the whole."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch
from conftest import tiny_speeder
from datasets import Dataset

from speeder_hf.evaluation.ranking import RankingOutcomes, collect_outcomes, evaluate_ranking
from speeder_hf.metrics import parse_title_answer
from speeder_hf.processing.prompts import PromptBuilder

NOUNS = "lipstick mascara shampoo soap cream brush nail gel oil mask".split()
COLORS = "red blue green".split()
TITLES = [f"{noun} {color}" for color in COLORS for noun in NOUNS]  # 30 titles, one per catalog row
ROWS = [
    {"user_id": f"u{i}", "history": history, "candidates": candidates, "target": candidates[t]}
    for i, (history, candidates, t) in enumerate(
        [
            ([0, 1, 2], [10, 11, 12, 13, 14], 2),
            ([5], [20, 21, 22, 23, 24], 4),
            (list(range(12)), [25, 26, 27, 28, 29], 0),
            ([3, 4, 5, 6, 7, 8, 9], [15, 16, 17, 18, 19], 1),
            ([29, 28], [0, 1, 2, 3, 4], 3),
            ([1, 3, 5, 7, 9, 11], [12, 14, 16, 18, 20], 2),
            ([2, 4], [6, 8, 10, 12, 14], 0),
        ]
    )
]
KEYS = {"VHR@1", "ValidRatio", "HR@1", "num_samples", "protocol", "answer_mode", "prompt_style", "by_history_len"}


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_speeder()


def single_prompt(model, tokenizer, row, **builder_kwargs):
    rendered = PromptBuilder(model.config, TITLES, **builder_kwargs).render(
        row["history"], row["candidates"], row["target"]
    )
    input_ids = torch.tensor([tokenizer(rendered.prompt)["input_ids"]])
    items = {"item_ids": torch.tensor(rendered.slot_items), "item_recency": torch.tensor(rendered.slot_recency)}
    return rendered, input_ids, items


def brute_force_metrics(values: list[tuple[bool, bool]]) -> dict[str, float]:
    valid = sum(v for v, _ in values)
    correct = sum(v and c for v, c in values)
    return {"VHR@1": correct / len(values), "ValidRatio": valid / len(values), "HR@1": correct / valid if valid else 0}


def test_index_mode_matches_per_sample_logits(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    result = evaluate_ranking(model, tokenizer, Dataset.from_list(ROWS), TITLES, batch_size=3, show_progress=False)
    assert model.training  # restored
    model.eval()

    ranks = []
    with torch.no_grad():
        for row in ROWS:
            rendered, input_ids, items = single_prompt(model, tokenizer, row)
            logits = model(input_ids=input_ids, **items).logits[0, -1]
            scores = logits[model.config.label_token_ids[:5]].tolist()
            target_score = scores[rendered.target_index]
            ranks.append(sum(s >= target_score for s in scores) - 1)
    n = len(ranks)
    expected = {"VHR@1": ranks.count(0) / n, "ValidRatio": 1.0, "HR@1": ranks.count(0) / n}
    for k in (5, 10):
        expected[f"HR@{k}"] = sum(r < k for r in ranks) / n
        expected[f"NDCG@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / n
    expected["NDCG@1"] = expected["HR@1"]
    expected["MRR"] = sum(1 / (r + 1) for r in ranks) / n
    assert set(result) == KEYS | set(expected)
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert len(set(ranks)) > 1  # the check is not vacuous
    assert result["num_samples"] == 7
    assert result["protocol"] == "5 candidates (target + 4 sampled negatives), label scores, one forward pass"
    assert sorted(result["by_history_len"]) == ["1-5", "11-20", "6-10"]
    short = [r for r, row in zip(ranks, ROWS) if len(row["history"]) <= 5]
    assert result["by_history_len"]["1-5"]["num_samples"] == len(short)
    assert result["by_history_len"]["1-5"]["MRR"] == pytest.approx(sum(1 / (r + 1) for r in short) / len(short))


@contextmanager
def writing_titles(model, tokenizer, seed: int = 0):
    """Makes the tiny random LM answer in title words: its first new token is a noun, the later ones colours, the word
    picked by a random projection of the LM's last hidden state (scaled to dominate its own logits). The pick still
    depends on the whole prompt (history, candidates, spliced item tokens, padding), so answers differ between rows
    and some name a candidate title, unlike the raw tiny LM, which never does (and title-mode comparisons would be
    all-invalid on both sides, 0 == 0)."""
    nouns, colors = ([tokenizer.convert_tokens_to_ids(w) for w in words] for words in (NOUNS, COLORS))
    head = model.get_output_embeddings()
    generator = torch.Generator().manual_seed(seed)
    projections = {True: torch.randn(head.in_features, len(nouns), generator=generator),
                   False: torch.randn(head.in_features, len(colors), generator=generator)}  # fmt: skip
    state = {}

    def note_prefill(module, args, kwargs):  # the prompt's forward pass has more than one position
        x = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs.get("input_ids")
        state["prefill"] = x.shape[1] > 1

    def bias(module, inputs, output):
        words, projection = (nouns if state["prefill"] else colors), projections[state["prefill"]]
        output = output.clone()
        output[..., words] += 1e3 + 100 * inputs[0] @ projection.to(inputs[0])
        return output

    handles = [model.language_model.register_forward_pre_hook(note_prefill, with_kwargs=True),
               head.register_forward_hook(bias)]  # fmt: skip
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_title_mode_matches_per_sample_generation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with writing_titles(model, tokenizer):
        result = evaluate_ranking(
            model, tokenizer, ROWS, TITLES, batch_size=3, answer_mode="title", max_new_tokens=4, show_progress=False
        )
        values, texts = [], []
        for row in ROWS:
            rendered, input_ids, items = single_prompt(model, tokenizer, row, answer_mode="title")
            new = model.generate(input_ids, torch.ones_like(input_ids), do_sample=False, max_new_tokens=4, **items)
            texts.append(tokenizer.decode(new[0], skip_special_tokens=True))
            pick = parse_title_answer(texts[-1], [TITLES[c] for c in rendered.candidates])
            values.append((pick is not None, pick == rendered.target_index))
    assert set(result) == KEYS
    assert {k: result[k] for k in ("VHR@1", "ValidRatio", "HR@1")} == pytest.approx(brute_force_metrics(values))
    # not vacuous: the answers differ between rows, some name a candidate (3 of 7 when measured) and some do not
    assert len(set(texts)) > 1 and 0 < sum(valid for valid, _ in values) < len(values)
    assert 0 < result["ValidRatio"] < 1


class ScriptedGenerator(torch.nn.Module):
    """Stands in for a model in title mode: replies with fixed texts, and records how it was called."""

    def __init__(self, config, tokenizer, replies):
        super().__init__()
        self.config, self.tokenizer, self.replies, self.calls = config, tokenizer, list(replies), []

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append({"left_padded": bool(attention_mask[:, -1].all()), **kwargs})
        texts, self.replies = self.replies[: len(input_ids)], self.replies[len(input_ids) :]
        ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        width = max(len(i) for i in ids)
        return torch.tensor([i + [self.tokenizer.pad_token_id] * (width - len(i)) for i in ids])


def test_title_mode_parses_replies_like_llara(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = ROWS[:5]
    titles = [[TITLES[c] for c in row["candidates"]] for row in rows]
    replies = [
        f"{TITLES[rows[0]['target']]}",  # valid, correct
        f"the answer {titles[1][0]}",  # valid, wrong
        f"{titles[2][0]} {titles[2][1]}",  # two titles: invalid
        "blue green",  # no title: invalid
        f"the answer {TITLES[rows[4]['target']]}",  # valid, correct
    ]
    scripted = ScriptedGenerator(model.config, tokenizer, replies)
    result = evaluate_ranking(scripted, tokenizer, rows, TITLES, batch_size=2, answer_mode="title", show_progress=False)
    assert result["VHR@1"] == pytest.approx(2 / 5)
    assert result["ValidRatio"] == pytest.approx(3 / 5)
    assert result["HR@1"] == pytest.approx(2 / 3)
    by_len = result["by_history_len"]  # rows 0, 1, 4 have 1-5 items (the two valid+correct and the wrong one)
    assert by_len["1-5"] == pytest.approx({"VHR@1": 2 / 3, "ValidRatio": 1.0, "HR@1": 2 / 3, "num_samples": 3})
    assert by_len["6-10"] == by_len["11-20"] == {"VHR@1": 0.0, "ValidRatio": 0.0, "HR@1": 0.0, "num_samples": 1}
    assert "HR@5" not in result and "MRR" not in result and "examples" not in result
    assert len(scripted.calls) == 3

    # The first answers come back as written, across batches, with their target and verdict.
    scripted = ScriptedGenerator(model.config, tokenizer, replies)
    result = evaluate_ranking(scripted, tokenizer, rows, TITLES, batch_size=2, answer_mode="title", num_examples=3)
    assert result["examples"] == [
        {"generated": replies[0], "target_title": TITLES[rows[0]["target"]], "valid": True, "correct": True},
        {"generated": replies[1], "target_title": TITLES[rows[1]["target"]], "valid": True, "correct": False},
        {"generated": replies[2], "target_title": TITLES[rows[2]["target"]], "valid": False, "correct": False},
    ]
    for call in scripted.calls:
        assert call["left_padded"] and call["do_sample"] is False and call["num_beams"] == 1
        assert call["max_new_tokens"] == 64 and set(call) >= {"item_ids", "item_recency"}


def test_bad_evaluation_input(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="pass item_titles"):
        evaluate_ranking(model, tokenizer, ROWS, answer_mode="title", show_progress=False)
    mixed = [ROWS[0], {**ROWS[1], "candidates": [20, 24]}]
    with pytest.raises(ValueError, match="different numbers of candidates"):
        evaluate_ranking(model, tokenizer, mixed, TITLES, batch_size=1, show_progress=False)


def test_outcomes_of_parts_add_up_to_the_whole_evaluation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    whole = evaluate_ranking(model, tokenizer, ROWS, TITLES, batch_size=3, show_progress=False)
    parts = [
        collect_outcomes(model, tokenizer, rows, TITLES, batch_size=2, show_progress=False)
        for rows in (ROWS[:3], ROWS[3:4], ROWS[4:])
    ]
    # saved as JSON between sittings and read back
    parts = [RankingOutcomes.from_dict(json.loads(json.dumps(part.to_dict()))) for part in parts]
    assert RankingOutcomes.concatenate(parts).summary() == whole

    titled = ScriptedGenerator(model.config, tokenizer, ["x"] * 2)
    title_part = collect_outcomes(titled, tokenizer, ROWS[:2], TITLES, answer_mode="title", show_progress=False)
    assert title_part.ranks is None and not title_part.valid.any()
    with pytest.raises(ValueError, match="different protocols"):
        RankingOutcomes.concatenate([parts[0], title_part])
    with pytest.raises(ValueError, match="No outcomes"):
        RankingOutcomes.concatenate([])


def test_an_evaluation_saved_in_parts_resumes_where_it_stopped(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    whole = evaluate_ranking(model, tokenizer, ROWS, TITLES, batch_size=3, show_progress=False)
    calls = []
    score_candidates = model.score_candidates

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return score_candidates(*args, **kwargs)

    monkeypatch.setattr(model, "score_candidates", counted)
    first = collect_outcomes(
        model, tokenizer, ROWS, TITLES, batch_size=3, show_progress=False, resume_dir=tmp_path, part_metadata={"n": 1}
    )
    assert first.summary() == whole and calls == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.glob("rows-*.json")) == [
        "rows-000000.json",
        "rows-000003.json",
        "rows-000006.json",
    ]
    (tmp_path / "rows-000003.json").unlink()  # a sitting killed before this part was saved
    stale = json.loads((tmp_path / "rows-000006.json").read_text())
    (tmp_path / "rows-000006.json").write_text(json.dumps({**stale, "rows": "other rows"}))
    calls.clear()
    again = collect_outcomes(
        model, tokenizer, Dataset.from_list(ROWS), TITLES, batch_size=3, show_progress=False, resume_dir=tmp_path,
        part_metadata={"n": 2},
    )  # fmt: skip
    assert again.summary() == whole and calls == [3, 1]  # only the missing and the stale part are answered again
    assert [(p["begin"], p["n"]) for p in again.parts] == [(0, 1), (3, 2), (6, 2)]
    assert again.seconds == pytest.approx(sum(p["seconds"] for p in again.parts))
