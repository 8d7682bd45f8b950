"""The same code on a CUDA device: evaluation there answers as on the CPU, the MPO stages train in bf16, a merged
model reloads straight onto the GPU and the pipeline and the MLLM baseline run there.

Skipped where no GPU is visible (CI has none); run `pytest tests/test_cuda.py` on a GPU machine."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from conftest import tiny_speeder
from test_benchmarks import TITLES as BASELINE_TITLES
from test_benchmarks import sharpen_attention, tiny_mllm, varied_rows
from test_evaluation import ROWS, TITLES, writing_titles
from transformers import AutoModel, TrainerCallback, TrainingArguments, pipeline

from benchmarks.baselines import MLLMDataCollator
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.evaluation.ranking import collect_outcomes, evaluate_ranking
from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.training.lora import merge_lora
from speeder_hf.training.mpo import available_modalities, default_stages, run_mpo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def outcomes_on(model, tokenizer, **options):
    return collect_outcomes(model, tokenizer, ROWS, TITLES, batch_size=3, show_progress=False, **options)


def test_evaluation_on_cuda_answers_as_on_the_cpu():
    model, tokenizer = tiny_speeder()
    cpu_index = outcomes_on(model, tokenizer)
    with writing_titles(model, tokenizer):  # some answers name a candidate, so the title comparison can fail
        cpu_title = outcomes_on(model, tokenizer, answer_mode="title", max_new_tokens=4)
    model.to("cuda")
    assert model.item_table.presence.device.type == "cuda"  # the catalog moves with the model
    gpu_index = outcomes_on(model, tokenizer)
    with writing_titles(model, tokenizer):
        gpu_title = outcomes_on(model, tokenizer, answer_mode="title", max_new_tokens=4)
    assert (gpu_index.ranks == cpu_index.ranks).all()
    assert len(set(cpu_index.ranks.tolist())) > 1  # the comparison is not vacuous
    assert (gpu_title.valid == cpu_title.valid).all() and (gpu_title.correct == cpu_title.correct).all()
    assert 0 < cpu_title.valid.sum() < len(ROWS)  # neither all-invalid (0 == 0) nor all-valid


class LossLog(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def test_mpo_trains_every_stage_in_bf16_and_the_merged_model_reloads_onto_the_gpu(tmp_path):
    model, tokenizer = tiny_speeder()
    rng = random.Random(0)
    rows = [
        {"user_id": str(u), "history": rng.sample(range(30), 1 + u % 6), "target": t, "candidates": [t, (t + 7) % 30]}
        for u, t in enumerate(rng.choices(range(30), k=16))
    ]
    collator = SpeederDataCollator(tokenizer, model.config, mode="train", return_metadata=True, shuffle_seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        report_to=[],
        remove_unused_columns=False,
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        bf16=True,
        seed=0,
    )
    stages = default_stages(available_modalities(model), learning_rate=1e-2, align_learning_rate=1e-2)
    log = LossLog()
    trained = run_mpo(model, stages, args, rows, collator, callbacks=[log])
    assert len(log.losses) == 3 * len(stages) == 12
    assert all(math.isfinite(loss) for loss in log.losses)
    assert {p.device.type for p in trained.parameters()} == {"cuda"}

    merged = merge_lora(trained).eval()
    before = evaluate_ranking(merged, tokenizer, ROWS, TITLES, show_progress=False)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModel.from_pretrained(tmp_path / "merged", device_map="cuda").eval()
    assert reloaded.device.type == "cuda"
    assert evaluate_ranking(reloaded, tokenizer, ROWS, TITLES, show_progress=False) == before


def test_pipeline_on_cuda_ranks_as_on_the_cpu():
    model, tokenizer = tiny_speeder()
    catalog = ItemCatalog([f"I{i}" for i in range(30)], TITLES, TITLES)
    request = {"history": ["I1", "I2", "I3"], "candidates": ["I4", "I5", "I6", "I7"]}
    on_cpu = pipeline("sequential-recommendation", model=model, tokenizer=tokenizer, catalog=catalog)(request)
    gpu_model = copy.deepcopy(model)
    gpu_pipe = pipeline("sequential-recommendation", model=gpu_model, tokenizer=tokenizer, catalog=catalog, device=0)
    on_gpu = gpu_pipe(request)
    assert gpu_model.device.type == "cuda"
    assert [r["item_id"] for r in on_gpu] == [r["item_id"] for r in on_cpu]
    assert [r["score"] for r in on_gpu] == pytest.approx([r["score"] for r in on_cpu], abs=1e-4)


def test_mllm_baseline_trains_and_generates_on_cuda():
    model, tokenizer = tiny_mllm()
    model.to("cuda")
    assert model.image_patches.device.type == "cuda"
    rows = [{"history": [0, 1, 2], "candidates": [3, 4, 5, 6, 7], "target": 5}]
    collator = MLLMDataCollator(tokenizer, model.config, TITLES, prompt_style="mllm", answer_mode="title")
    batch = {k: v.to("cuda") for k, v in collator(rows).items()}
    model.train()
    model(**batch).loss.backward()
    assert model.mrc.image_projector.fc1.weight.grad.abs().sum() > 0
    model.eval()
    sharpen_attention(model)
    options = {"prompt_style": "mllm", "answer_mode": "title", "max_new_tokens": 4, "show_progress": False,
               "collator_class": MLLMDataCollator}  # fmt: skip
    varied = varied_rows()
    with writing_titles(model, tokenizer):  # some answers name a candidate, so the comparison can fail
        on_gpu = collect_outcomes(model, tokenizer, varied, BASELINE_TITLES, **options)
        on_cpu = collect_outcomes(model.to("cpu"), tokenizer, varied, BASELINE_TITLES, **options)
    assert (on_gpu.valid == on_cpu.valid).all() and (on_gpu.correct == on_cpu.correct).all()
    assert 0 < on_cpu.valid.sum() < len(varied)
