"""Collaborative prior: the collator's SASRec inputs, exact SASRec ranking when the LLM's scores are zero, save and
load, training of its weight alone under MPO and LoRA, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_speeder
from test_collator import ROWS, TITLES
from transformers import AutoModel

from speeder_hf.catalog.sasrec import SASRec
from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.training.lora import apply_lora, merge_lora
from speeder_hf.training.mpo import parameter_group, set_trainable
from speeder_hf.training.prior_calibration import PriorFusion, calibrate_priors

NUM_ITEMS = 30


def trained_looking_sasrec(max_len: int = 4) -> SASRec:
    """A SASRec with spread-out random weights, so candidate scores differ clearly."""
    torch.manual_seed(3)
    sasrec = SASRec(NUM_ITEMS, hidden_size=8, num_layers=1, max_len=max_len, dropout=0.3)
    with torch.no_grad():
        sasrec.item_embedding.weight.normal_(0, 1.0)
    return sasrec.eval()


def speeder_with_prior(**config_kwargs):
    model, tokenizer = tiny_speeder(num_items=NUM_ITEMS, **config_kwargs)
    sasrec = trained_looking_sasrec()
    model.set_collaborative_prior(sasrec)
    return model.eval(), tokenizer, sasrec


def eval_batch(model, tokenizer, rows=ROWS):
    batch = SpeederDataCollator(tokenizer, model.config, TITLES, mode="eval")(rows)
    return batch, SpeederDataCollator.pop_metadata(batch)


def sasrec_candidate_scores(sasrec: SASRec, rows, candidates: torch.Tensor) -> torch.Tensor:
    """SASRec's own scores of the presented candidates, the way `evaluate_sasrec` computes them."""
    scores = sasrec.score_all(sasrec.last_hidden([r["history"] for r in rows]))  # (B, N)
    return scores.gather(1, candidates)


def test_collator_writes_the_last_sasrec_window_and_candidates_in_label_order():
    model, tokenizer, _ = speeder_with_prior()
    batch, meta = eval_batch(model, tokenizer)
    assert batch["prior_history"].shape == (3, 4)  # the prior's max_len, not the prompt's 8 history items
    assert batch["prior_history"][0].tolist() == [3, 4, 5, 6]  # rows 2..5 as tokens row + 1
    assert batch["prior_history"][1].tolist() == [0, 0, 0, 8]  # left-padded
    assert torch.equal(batch["candidate_ids"], meta["candidate_items"])


def test_with_zero_llm_scores_the_ranking_is_exactly_sasrecs():
    model, tokenizer, sasrec = speeder_with_prior(tie=False)
    with torch.no_grad():
        model.language_model.get_output_embeddings().weight.zero_()  # every label logit 0
        model.candidate_pointer.key.zero_()  # a fresh pointer adds 0 (as at initialisation)
    batch, meta = eval_batch(model, tokenizer)
    scores = model.score_candidates(**batch)  # (B, C)
    expected = sasrec_candidate_scores(sasrec, ROWS, meta["candidate_items"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(scores.argsort(1, descending=True), expected.argsort(1, descending=True))
    assert len({tuple(r) for r in scores.argsort(1).tolist()}) > 1  # the rows are ranked differently


def test_the_prior_changes_scores_and_training_loss_by_its_weight():
    model, tokenizer, sasrec = speeder_with_prior()
    batch, meta = eval_batch(model, tokenizer)
    with_prior = model.score_candidates(**batch)
    with torch.no_grad():
        model.collaborative_prior.weight.fill_(0.0)
    without = model.score_candidates(**batch)
    expected = sasrec_candidate_scores(sasrec, ROWS, meta["candidate_items"])
    torch.testing.assert_close(with_prior - without, expected, atol=1e-5, rtol=1e-5)

    train = SpeederDataCollator(tokenizer, model.config, TITLES)(ROWS)
    with torch.no_grad():
        loss_without = model(**train).loss
        model.collaborative_prior.weight.fill_(5.0)
        loss_with = model(**train).loss
    assert not torch.isclose(loss_with, loss_without)


def test_save_and_auto_load_give_identical_scores(tmp_path):
    model, tokenizer, _ = speeder_with_prior()
    with torch.no_grad():
        model.collaborative_prior.weight.fill_(0.7)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.collaborative_prior == model.config.collaborative_prior
    assert loaded.collaborative_prior.weight.item() == pytest.approx(0.7)
    batch, _ = eval_batch(model, tokenizer)
    torch.testing.assert_close(loaded.score_candidates(**batch), model.score_candidates(**batch), atol=1e-5, rtol=0)


def test_only_the_weight_trains_and_sasrec_stays_frozen_and_in_eval_mode_under_lora():
    model, tokenizer, sasrec = speeder_with_prior()
    peft_model = apply_lora(model, r=2)
    counts = set_trainable(peft_model, ["head", "lora"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad and "collaborative_prior" in n]
    assert trainable == ["base_model.model.collaborative_prior.modules_to_save.default.weight"]
    assert counts["head"] == model.candidate_pointer.query.numel() * 2 + 1
    assert parameter_group("collaborative_prior.sasrec.item_embedding.weight") is None

    peft_model.train()
    sasrec_modules = [m for n, m in peft_model.named_modules() if n.endswith("sasrec")]
    assert sasrec_modules and not any(m.training for s in sasrec_modules for m in s.modules())
    train = SpeederDataCollator(tokenizer, model.config, TITLES)(ROWS)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "sasrec" in n}
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**train).loss.backward()
        optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters() if "sasrec" in n)
    merged = merge_lora(peft_model).eval()
    assert merged.collaborative_prior.weight.item() != 1.0  # the weight learned, and survives the merge
    assert torch.equal(merged.collaborative_prior.sasrec.item_embedding.weight, sasrec.item_embedding.weight)


def test_bad_input_names_the_problem():
    model, tokenizer, _ = speeder_with_prior()
    batch, _ = eval_batch(model, tokenizer)
    del batch["prior_history"]
    with pytest.raises(ValueError, match="pass prior_history and candidate_ids"):
        model.score_candidates(**batch)
    with pytest.raises(ValueError, match="covers 12 items but the model's catalog has 30"):
        model.set_collaborative_prior(SASRec(12, hidden_size=8))
    title_model, _ = tiny_speeder(num_items=NUM_ITEMS, answer_mode="title")
    with pytest.raises(ValueError, match="needs answer_mode='index'"):
        title_model.set_collaborative_prior(trained_looking_sasrec())
    with pytest.raises(ValueError, match="at least one history item"):
        eval_batch(model, tokenizer, [{**ROWS[0], "history": []}])


def test_replacing_the_sasrec_keeps_the_learned_weight():
    model, tokenizer, _ = speeder_with_prior()
    with torch.no_grad():
        model.collaborative_prior.weight.fill_(2.5)
    other = trained_looking_sasrec(max_len=6)
    model.set_collaborative_prior(other)
    assert model.collaborative_prior.weight.item() == 2.5 and model.config.collaborative_prior["max_len"] == 6
    assert torch.equal(model.collaborative_prior.sasrec.item_embedding.weight, other.item_embedding.weight)


def test_fit_weight_finds_the_minimum_of_the_prior_alone_cross_entropy():
    model, tokenizer, _ = speeder_with_prior()
    batch, meta = eval_batch(model, tokenizer)
    prior = model.collaborative_prior
    fusion = PriorFusion.of(model)
    fitted = fusion.fit(ROWS)
    assert list(fitted) == ["sasrec"] and prior.weight.item() == 1.0  # fitting sets nothing
    weight = fusion.set_weights(fitted)["sasrec"]
    assert prior.weight.item() == pytest.approx(weight)

    def loss(w: float) -> float:
        scores = w * prior.sasrec_scores(batch["prior_history"], batch["candidate_ids"])
        return torch.nn.functional.cross_entropy(scores, meta["target_index"]).item()

    assert loss(weight) <= min(loss(weight * 0.9), loss(weight * 1.1), loss(1.0)) + 1e-9


def test_calibration_sets_the_llm_and_prior_weights_it_returns():
    model, tokenizer, _ = speeder_with_prior()
    with torch.no_grad():
        model.candidate_pointer.key.normal_()  # LLM scores that are not all zero
    batch, _ = eval_batch(model, tokenizer)
    before = model.score_candidates(**batch)
    weights = calibrate_priors(model, tokenizer, ROWS, TITLES, batch_size=2)
    assert list(weights) == ["llm", "sasrec"]
    assert model.config.llm_score_weight == pytest.approx(weights["llm"])
    assert model.collaborative_prior.weight.item() == pytest.approx(weights["sasrec"])
    with PriorFusion.of(model).weights_applied({"llm": 1.0, "sasrec": 1.0}):
        torch.testing.assert_close(model.score_candidates(**batch), before)  # the parts, reweighted only
    assert PriorFusion.of(model).weights == pytest.approx(weights)  # restored after the block
    model.collaborative_prior = None
    with pytest.raises(ValueError, match="no prior to calibrate"):
        calibrate_priors(model, tokenizer, ROWS, TITLES)
