"""The `sequential-recommendation` pipeline and the Recommender behind it (tiny model, in-process catalog)."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from conftest import run_fresh_python, tiny_speeder
from transformers import AutoModel, pipeline

import speeder_hf
import speeder_hf.serving.pipeline_speeder  # noqa: F401  (registers the task)
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec
from speeder_hf.serving.bundle import load_catalog_for, load_sasrec_for, save_pretrained_bundle
from speeder_hf.serving.recommend import (
    FeatureRetriever,
    Recommender,
    SASRecRetriever,
    UnknownItemError,
    default_retriever,
)

NUM_ITEMS = 30


def tiny_catalog(n: int = NUM_ITEMS) -> ItemCatalog:
    titles = [f"title {i}" for i in range(n)]
    titles[7] = titles[6]  # two items share a title
    titles[9] = "I2"  # a title that is another item's id
    return ItemCatalog([f"I{i}" for i in range(n)], titles, [f"text of item {i}" for i in range(n)])


def tiny_sasrec(n: int = NUM_ITEMS) -> SASRec:
    torch.manual_seed(3)
    return SASRec(num_items=n, hidden_size=8, num_layers=1, max_len=10).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model, tokenizer = tiny_speeder(num_items=NUM_ITEMS)
    catalog, sasrec = tiny_catalog(), tiny_sasrec()
    directory = tmp_path_factory.mktemp("speeder") / "model"
    save_pretrained_bundle(model, directory, tokenizer, catalog, sasrec=sasrec)
    return model, tokenizer, catalog, directory, sasrec


@pytest.fixture(scope="module")
def pipe(bundle):
    model, tokenizer, catalog, _, sasrec = bundle
    return pipeline(
        "sequential-recommendation",
        model=model,
        tokenizer=tokenizer,
        catalog=catalog,
        retriever=SASRecRetriever(sasrec),
    )


INPUTS = [
    ["I1", "title 2", "I3"],
    {"history": ["I4"], "candidates": ["I5", "title 8", "I10"]},
    {"history": ["I11", "I12", "I13", "I14", "I15"], "candidates": ["I1", "I2"]},
]


def _same_rankings(a, b):
    assert [[r["item_id"] for r in ranking] for ranking in a] == [[r["item_id"] for r in ranking] for ranking in b]
    for ranking_a, ranking_b in zip(a, b):
        torch.testing.assert_close([r["score"] for r in ranking_a], [r["score"] for r in ranking_b])


def test_output_format_and_scores(pipe, bundle):
    model = bundle[0]
    out = pipe({"history": ["I4"], "candidates": ["I5", "title 8", "I10"]})
    assert [set(r) for r in out] == [{"item_id", "title", "score"}] * 3
    assert {r["item_id"] for r in out} == {"I5", "I8", "I10"}
    assert [r["score"] for r in out] == sorted((r["score"] for r in out), reverse=True)
    assert sum(r["score"] for r in out) == pytest.approx(1.0, abs=1e-5)
    assert next(r for r in out if r["item_id"] == "I8")["title"] == "title 8"

    # The scores are the softmax of the model's label logits over the candidates, in the order presented.
    recommender = pipe.recommender
    request = recommender.prepare(["I4"], ["I5", "title 8", "I10"])
    batch = recommender.collator([{"history": [4], "candidates": [5, 8, 10], "target": 5}])
    batch = {key: value.to(model.device) for key, value in batch.items()}  # the pipeline takes a visible GPU
    expected = model.score_candidates(num_candidates=3, **batch)[0].softmax(-1).cpu()
    assert request.candidates == [5, 8, 10]
    torch.testing.assert_close(recommender.score([request])[0], expected)


def test_without_candidates_retrieves_then_reranks(pipe, bundle):
    model, sasrec = bundle[0], bundle[4]
    out = pipe(["I1", "title 2", "I3"])
    ids = [r["item_id"] for r in out]
    assert len(ids) == model.config.num_candidates == len(set(ids))
    assert not {"I1", "I2", "I3"} & set(ids)
    # Stage 1 is SASRec's full ranking without the history items; stage 2 reorders those candidates.
    scores = sasrec.score_all(sasrec.last_hidden([[1, 2, 3]]))[0].detach()
    scores[[1, 2, 3]] = float("-inf")
    assert set(ids) == {f"I{row}" for row in scores.topk(model.config.num_candidates).indices.tolist()}
    assert len(pipe(["I1"], top_k=2)) == 2


def test_default_retriever_is_the_saved_sasrec_else_the_features(bundle):
    model, _, _, directory, sasrec = bundle
    retriever = default_retriever(model, str(directory))
    assert isinstance(retriever, SASRecRetriever)
    torch.testing.assert_close(retriever.sasrec.item_embeddings(), sasrec.item_embeddings())
    fallback = default_retriever(model)  # built in memory: no directory, no SASRec
    assert isinstance(fallback, FeatureRetriever) and fallback.modality == "id"


def test_sasrec_of_another_catalog_is_rejected(bundle, tmp_path):
    model, tokenizer, catalog = bundle[:3]
    with pytest.raises(ValueError, match="SASRec has 31 items but the model's catalog has 30"):
        save_pretrained_bundle(model, tmp_path, tokenizer, catalog, sasrec=tiny_sasrec(31))
    tiny_sasrec(31).save_pretrained(tmp_path / "sasrec")
    with pytest.raises(ValueError, match="different catalogs"):
        load_sasrec_for(model, tmp_path)


def test_batched_equals_one_by_one(pipe):
    one_by_one = [pipe(x) for x in INPUTS]
    _same_rankings(pipe(INPUTS, batch_size=2), one_by_one)
    _same_rankings(pipe(INPUTS, batch_size=1), one_by_one)
    _same_rankings(
        pipe.recommender.recommend([["I1", "title 2", "I3"], ["I4"]], [None, ["I5", "title 8", "I10"]]), one_by_one[:2]
    )


def test_history_of_ids_and_titles_is_the_same(pipe):
    _same_rankings([pipe(["I1", "I2", "I3"])], [pipe(["title 1", "title 2", "title 3"])])
    # "I2" is item 2's id and item 9's title: the id wins.
    assert pipe.recommender.resolve("I2") == 2 and pipe.recommender.resolve("I9") == 9
    assert pipe.recommender.resolve("TITLE 4") == 4  # titles match case-insensitively


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        (["I1", "nope"], UnknownItemError, "Unknown item 'nope'"),
        ({"history": ["I1"], "candidates": ["I3", "I999"]}, UnknownItemError, "Unknown item 'I999'"),
        (["title 6"], UnknownItemError, r"ambiguous: items \['I6', 'I7'\]"),
        ([], ValueError, "Empty history"),
        ({"history": []}, ValueError, "Empty history"),
        ({"history": ["I1"], "candidates": []}, ValueError, "non-empty list"),
        ({"history": ["I1"], "candidates": ["I3", "title 3"]}, ValueError, r"Duplicate candidates \['title 3'\]"),
        ({"history": ["I1"], "candidates": [f"I{i}" for i in range(2, 9)]}, ValueError, "at most 5"),
        ({"history": ["I1"], "wanted": ["I2"]}, ValueError, "'history' and optionally 'candidates'"),
    ],
)
def test_errors(pipe, inputs, error, match):
    with pytest.raises(error, match=match):
        pipe(inputs)


def test_unknown_call_argument(pipe):
    with pytest.raises(TypeError, match="candidates= and top_k="):
        pipe(["I1"], topk=3)


def test_catalog_of_another_size_is_rejected(bundle, tmp_path):
    model, tokenizer, _, directory, _ = bundle
    with pytest.raises(ValueError, match="Catalog size mismatch: the catalog has 29 items.*30 items"):
        pipeline("sequential-recommendation", model=model, tokenizer=tokenizer, catalog=tiny_catalog(29))
    # A model directory whose catalog.json comes from another catalog.
    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    tiny_catalog(31).save(tmp_path)
    with pytest.raises(ValueError, match="item_catalog.json in .* has 31 items"):
        pipeline("sequential-recommendation", model=str(tmp_path))


def test_title_answer_models_are_rejected(bundle):
    model, tokenizer = tiny_speeder(num_items=NUM_ITEMS, answer_mode="title")
    with pytest.raises(ValueError, match="answers with titles"):
        Recommender(model, tokenizer, bundle[2])


def test_feature_retriever_ranks_by_recency_weighted_similarity():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.0, -3.0], [5.0, 5.0]])
    presence = torch.tensor([True, True, True, True, True, False])
    retriever = FeatureRetriever(features, presence, "id")
    # The most recent item (weight 1) outweighs the one before (weight 1/2); item 5 (no feature) comes last.
    assert retriever.retrieve([[0, 1]], 4) == [[3, 2, 4, 5]]
    assert retriever.retrieve([[1, 0]], 2) == [[2, 3]]
    assert retriever.retrieve([[0, 1, 2, 3, 4]], 10) == [[5]]
    with pytest.raises(ValueError, match="nothing is left"):
        retriever.retrieve([[0, 1, 2, 3, 4, 5]], 3)


def test_loaded_with_auto_model_recommends_like_the_original(bundle):
    model, tokenizer, catalog, directory, sasrec = bundle
    loaded = AutoModel.from_pretrained(directory).eval()
    loaded_catalog = load_catalog_for(loaded)
    assert (loaded_catalog.item_ids, loaded_catalog.titles, loaded_catalog.texts) == (
        catalog.item_ids,
        catalog.titles,
        catalog.texts,
    )
    assert loaded_catalog.modalities == []  # the features live in the model only
    original = Recommender(model, tokenizer, catalog, SASRecRetriever(sasrec))
    reloaded = Recommender.from_pretrained(str(directory))
    assert isinstance(reloaded.retriever, SASRecRetriever)
    histories = [["I1", "title 2"], ["I20", "I21", "I22"]]
    _same_rankings(reloaded.recommend(histories), original.recommend(histories))


# `import speeder_hf` alone must register the task.
_FRESH = "import speeder_hf\n" + textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    model_dir, inputs = sys.argv[1], json.loads(sys.argv[2])
    recommend = pipeline("sequential-recommendation", model=model_dir)
    print(json.dumps(recommend(inputs, batch_size=2)))
    """
)


def test_save_load_in_a_fresh_process_gives_identical_recommendations(bundle, pipe, tmp_path):
    directory = bundle[3]
    (tmp_path / "fresh.py").write_text(_FRESH)
    result = run_fresh_python([str(tmp_path / "fresh.py"), str(directory), json.dumps(INPUTS)], cwd=tmp_path)
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    _same_rankings(fresh, pipe(INPUTS))
