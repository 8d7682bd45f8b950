"""Content prior: its similarities against a brute-force loop, no effect until fitted, exact ranking when it is the
only score, the joint fit of the priors' weights, save and load, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_speeder
from test_collaborative_prior import NUM_ITEMS, eval_batch, speeder_with_prior
from test_collator import ROWS, TITLES
from transformers import AutoModel

from speeder_hf.training.fusion_weights import RIDGE, fit_fusion_weights
from speeder_hf.training.prior_calibration import PriorFusion, calibrate_priors


def speeder_with_content_prior(**config_kwargs):
    model, tokenizer, sasrec = speeder_with_prior(**config_kwargs)
    model.set_content_prior(["text", "image"])
    return model, tokenizer, sasrec


def brute_force_similarities(model, row, candidates: list[int], history_len: int) -> torch.Tensor:
    """`(C, 6)`: per modality (text, image) the max, mean and latest cosine of each candidate to the history items
    that have the modality, one pair at a time."""
    table = model.item_table
    history = list(row["history"])[-history_len:]
    out = torch.zeros(len(candidates), 6)
    for m, modality in enumerate(["text", "image"]):
        column = model.config.modalities.index(modality)
        features = getattr(table, f"features_{modality}")
        for c, candidate in enumerate(candidates):
            if not table.presence[candidate, column]:
                continue
            sims = [
                float(torch.cosine_similarity(features[candidate], features[h], dim=0))
                for h in history
                if table.presence[h, column]
            ]
            if sims:
                latest_present = bool(table.presence[history[-1], column])
                out[c, 3 * m : 3 * m + 3] = torch.tensor(
                    [max(sims), sum(sims) / len(sims), sims[-1] if latest_present else 0.0]
                )
    return out


def test_similarities_match_a_brute_force_loop_including_an_item_without_image():
    model, tokenizer, _ = speeder_with_content_prior()
    rows = [*ROWS, {"user_id": "u3", "history": [1, 3], "candidates": [3, 4, 5, 6, 7], "target": 3}]  # 3: no image
    batch, meta = eval_batch(model, tokenizer, rows)
    got = model.content_prior.similarities(model.item_table, batch["prior_history"], batch["candidate_ids"])
    assert got.shape == (4, 5, 6) and model.content_prior.feature_names[:3] == ["text.max", "text.mean", "text.last"]
    for i, row in enumerate(rows):
        expected = brute_force_similarities(model, row, meta["candidate_items"][i].tolist(), history_len=4)
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=0)
    assert got[3, meta["candidate_items"][3].tolist().index(3), 3:].abs().sum() == 0  # no image: no image score
    assert got[3, :, 5].abs().sum() == 0  # the latest history item (3) has no image


def test_a_fresh_content_prior_changes_no_score_and_a_weighted_one_adds_exactly_its_similarities():
    model, tokenizer, _ = speeder_with_prior()
    batch, _ = eval_batch(model, tokenizer)
    before = model.score_candidates(**batch)
    model.set_content_prior(["text"])
    assert torch.equal(model.score_candidates(**batch), before)
    weights = torch.tensor([2.0, -0.5, 1.0])
    with torch.no_grad():
        model.content_prior.weight.copy_(weights)
    similarities = model.content_prior.similarities(model.item_table, batch["prior_history"], batch["candidate_ids"])
    torch.testing.assert_close(model.score_candidates(**batch) - before, similarities @ weights, atol=1e-5, rtol=0)


def test_as_the_only_score_the_ranking_is_the_closest_history_items():
    model, tokenizer, _ = speeder_with_content_prior(tie=False)
    with torch.no_grad():
        model.language_model.get_output_embeddings().weight.zero_()  # every label logit 0
        model.candidate_pointer.key.zero_()
        model.collaborative_prior.weight.zero_()
        model.content_prior.weight.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0]))  # text.max alone
    batch, meta = eval_batch(model, tokenizer)
    ranking = model.score_candidates(**batch).argsort(1, descending=True)
    for i, row in enumerate(ROWS):
        brute = brute_force_similarities(model, row, meta["candidate_items"][i].tolist(), history_len=4)[:, 0]
        assert ranking[i].tolist() == brute.argsort(descending=True).tolist()


def test_fit_fusion_weights_reaches_the_minimum_of_a_known_problem():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, 3, generator=generator)
    true = torch.tensor([1.5, -1.0, 0.5])
    target = torch.distributions.Categorical(logits=features @ true).sample()
    weights = fit_fusion_weights(features, target)

    def loss(w: torch.Tensor) -> float:
        return torch.nn.functional.cross_entropy(features.double() @ w, target).item() + RIDGE / 2 * w.dot(w).item()

    assert all(loss(weights) <= loss(weights + step) for step in 0.05 * torch.eye(3, dtype=torch.float64))
    assert all(loss(weights) <= loss(weights - step) for step in 0.05 * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(weights.float(), true, atol=0.5)  # 400 draws recover the generating weights roughly
    offsets = torch.randn(400, 6, generator=generator)
    valid = torch.ones(400, 6, dtype=torch.bool)
    valid[:, 5] = False
    target = target.clamp(max=4)
    shifted = fit_fusion_weights(features, target, valid, offsets)
    masked = (offsets.double() + features.double() @ shifted).masked_fill(~valid, -torch.inf)
    gradient = torch.autograd.functional.jacobian(
        lambda w: torch.nn.functional.cross_entropy(
            (offsets.double() + features.double() @ w).masked_fill(~valid, -torch.inf), target
        ),
        shifted,
    )
    assert torch.isfinite(masked.logsumexp(1)).all()
    torch.testing.assert_close(gradient, -RIDGE * shifted, atol=1e-8, rtol=0)  # the minimum of the penalised loss


def test_calibration_fits_every_prior_weight_against_the_llm_scores():
    model, tokenizer, _ = speeder_with_content_prior()
    with torch.no_grad():
        model.candidate_pointer.key.normal_()  # LLM scores that are not all zero
    rows = [{**row, "target": candidate} for row in ROWS for candidate in row["candidates"]]  # not separable
    weights = calibrate_priors(model, tokenizer, rows, TITLES, batch_size=5)
    assert list(weights) == ["llm", "sasrec"] + model.content_prior.feature_names
    assert PriorFusion.of(model).weights == pytest.approx(weights)
    batch, meta = eval_batch(model, tokenizer, rows)
    fitted = torch.tensor(list(weights.values()))

    def loss(w: torch.Tensor) -> float:
        PriorFusion.of(model).set_weights(dict(zip(weights, w.tolist())))
        scores = model.score_candidates(**batch)
        return torch.nn.functional.cross_entropy(scores, meta["target_index"]).item() + RIDGE / 2 * w.dot(w).item()

    best = loss(fitted)
    for k in range(len(fitted)):
        step = torch.zeros_like(fitted)
        step[k] = 0.1
        assert best <= min(loss(fitted + step), loss(fitted - step)) + 1e-6


def test_save_and_auto_load_keep_the_content_prior_and_its_scores(tmp_path):
    model, tokenizer, _ = speeder_with_content_prior()
    with torch.no_grad():
        model.content_prior.weight.copy_(torch.arange(6.0))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.content_prior == ["text", "image"]
    assert torch.equal(loaded.content_prior.weight, model.content_prior.weight)
    batch, _ = eval_batch(model, tokenizer)
    torch.testing.assert_close(loaded.score_candidates(**batch), model.score_candidates(**batch), atol=1e-5, rtol=0)


def test_bad_content_prior_settings_name_the_problem():
    model, _ = tiny_speeder(num_items=NUM_ITEMS)
    with pytest.raises(ValueError, match=r"Unknown modalities \['audio'\]"):
        model.set_content_prior(["audio"])
    with pytest.raises(ValueError, match="content_prior names modalities"):
        type(model.config)(modalities=["text"], modality_dims=[4], content_prior=["image"])
    title_model, _ = tiny_speeder(num_items=NUM_ITEMS, answer_mode="title")
    with pytest.raises(ValueError, match="needs answer_mode='index'"):
        title_model.set_content_prior(["text"])
    with pytest.raises(ValueError, match="no prior to fit"):
        PriorFusion(None, None)
