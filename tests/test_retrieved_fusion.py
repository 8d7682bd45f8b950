"""Scoring retrieved candidates: the fit of the LLM's and the priors' weights on a retriever's top candidates, its
use by the Recommender for retrieved requests only, and its fallback to the retriever's own order."""

from __future__ import annotations

import pytest
import torch
from test_collaborative_prior import NUM_ITEMS
from test_content_prior import speeder_with_content_prior
from test_pipeline import tiny_catalog
from transformers import AutoModel

from speeder_hf.serving.recommend import Recommender, Request, SASRecRetriever
from speeder_hf.training.fusion_weights import RIDGE
from speeder_hf.training.prior_calibration import LLM_WEIGHT, calibrate_retrieved_fusion

K = 5


def recommender_and_rows():
    model, tokenizer, sasrec = speeder_with_content_prior()
    with torch.no_grad():
        model.candidate_pointer.key.normal_()  # LLM scores that are not all zero
        model.content_prior.weight.normal_()
    retriever = SASRecRetriever(sasrec)
    histories = [[(3 * u + j) % NUM_ITEMS for j in range(1 + u % 4)] for u in range(60)]
    found = retriever.retrieve(histories, K)
    # Each history's target among its retrieved items, at every position, so that the fit is not separable.
    rows = [{"history": h, "target": items[u % K]} for u, (h, items) in enumerate(zip(histories, found))]
    recommender = Recommender(model, tokenizer, tiny_catalog(NUM_ITEMS), retriever)
    return recommender, rows


def test_the_fit_minimises_the_retrieved_candidates_cross_entropy_and_is_stored_in_the_config():
    recommender, rows = recommender_and_rows()
    model = recommender.model
    weights = calibrate_retrieved_fusion(model, recommender.tokenizer, rows, recommender.retriever, K)
    assert list(weights) == [LLM_WEIGHT, "sasrec", *model.content_prior.feature_names, "fitted_on"]
    assert weights["fitted_on"] == len(rows) and model.config.retrieved_fusion == weights
    requests = [Request(r["history"], recommender.retriever.retrieve([r["history"]], K)[0], True) for r in rows]
    targets = torch.tensor([req.candidates.index(r["target"]) for req, r in zip(requests, rows)])
    names = [name for name in weights if name != "fitted_on"]

    def loss(values: dict[str, float]) -> float:
        model.config.retrieved_fusion = values
        probabilities = torch.stack(recommender.score(requests))  # (N, K) softmax
        weights_vector = torch.tensor([values[n] for n in names])
        return (
            torch.nn.functional.nll_loss(probabilities.log(), targets).item()
            + RIDGE / 2 * weights_vector.dot(weights_vector).item()
        )

    best = loss(dict(weights))
    for name in names:
        for step in (0.1, -0.1):
            assert best <= loss({**weights, name: weights[name] + step}) + 1e-5


def test_sasrec_weight_alone_gives_the_retrievers_order_and_given_candidates_are_untouched():
    recommender, rows = recommender_and_rows()
    model = recommender.model
    fallback = {LLM_WEIGHT: 0.0, "sasrec": 1.0, **{n: 0.0 for n in model.content_prior.feature_names}}
    given = Request(rows[0]["history"], [0, 1, 2, 3, 4], retrieved=False)
    before = recommender.score([given])[0]
    model.config.retrieved_fusion = fallback
    for row in rows[:10]:
        request = recommender.prepare(
            [recommender.catalog.item_ids[i] for i in row["history"]]
        )  # no candidates: retrieved, best SASRec item first
        assert request.retrieved
        scores = recommender.score([request])[0]
        assert scores.argsort(descending=True).tolist() == list(range(len(request.candidates)))
    torch.testing.assert_close(recommender.score([given])[0], before)


def test_the_weights_travel_with_the_saved_config(tmp_path):
    recommender, rows = recommender_and_rows()
    model = recommender.model
    weights = calibrate_retrieved_fusion(model, recommender.tokenizer, rows, recommender.retriever, K)
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).config.retrieved_fusion == pytest.approx(weights)


def test_a_retriever_that_finds_no_target_fits_nothing_and_says_so(caplog):
    recommender, rows = recommender_and_rows()
    missing = [{"history": r["history"], "target": r["history"][0]} for r in rows]  # history items: never retrieved
    model = recommender.model
    assert calibrate_retrieved_fusion(model, recommender.tokenizer, missing, recommender.retriever, K) is None
    assert model.config.retrieved_fusion is None and "holds no target of the 60 rows" in caplog.text
    model.collaborative_prior = model.content_prior = None
    with pytest.raises(ValueError, match="no prior to calibrate"):
        calibrate_retrieved_fusion(model, recommender.tokenizer, rows, recommender.retriever, K)
