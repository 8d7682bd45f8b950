"""MPO: the default schedule, stage order and skipping, per-group freezing, the modality switch on a stage's first
batch, per-step mixing, per-epoch set_epoch, and resuming an interrupted run in the right stage and step."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import tiny_speeder
from peft import PeftModel
from test_trainer import ToyCollator, ToyRows, toy_args
from transformers import TrainerCallback, TrainerState

from speeder_hf.training.mpo import (
    MPOCallback,
    Stage,
    available_modalities,
    default_stages,
    has_progress,
    parameter_group,
    run_mpo,
)


class Recorder(TrainerCallback):
    """Per stage: the output folder, the global step at train begin, and the parameter groups that changed."""

    def __init__(self):
        self.stages: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.stages.append({"dir": args.output_dir.rsplit("/", 1)[-1], "start_step": state.global_step})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        changed = {parameter_group(n) for n, p in model.named_parameters() if not torch.equal(p, self.params[n])}
        self.stages[-1].update(changed=changed, end_step=state.global_step)


class Interrupt(Exception):
    pass


class KillAt(TrainerCallback):
    """Raises after `step` optimizer steps of the stage whose folder name ends with `stage_dir`."""

    def __init__(self, stage_dir: str, step: int):
        self.stage_dir, self.step = stage_dir, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.stage_dir) and state.global_step == self.step:
            raise Interrupt


def record_active_modalities(model) -> list[list[str]]:
    """Records `model.active_modalities` at each forward, i.e. what the batch actually used."""
    seen: list[list[str]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(list(module.active_modalities)))
    return seen


def model_without_images():
    model, tokenizer = tiny_speeder()
    presence = model.item_table.presence.clone()
    presence[:, model.config.modalities.index("image")] = False
    features = {m: getattr(model.item_table, f"features_{m}") for m in model.config.modalities}
    model.set_item_features(features, presence)
    return model, tokenizer


def test_default_stages_follow_the_spec():
    stages = default_stages(["id", "image", "text"], max_steps=5)
    assert [(s.name, s.modalities, s.lora) for s in stages] == [
        ("align", ["text"], False),
        ("text", ["text"], True),
        ("text+image", ["text", "image"], False),
        ("all", ["text", "image", "id"], False),
    ]
    assert stages[0].train == ["mrc", "spae", "head"]
    assert all(s.train == ["mrc", "spae", "head", "lora"] for s in stages[1:])
    assert all(s.max_steps == 5 and s.mix_from is None for s in stages)
    assert [s.name for s in default_stages(["text", "id"])] == ["align", "text", "all"]
    assert [s.name for s in default_stages(["text"])] == ["align", "text"]
    mixed = default_stages(["text", "image", "id"], mix=True)
    assert [s.mix_from for s in mixed] == [None, None, ["text"], ["text", "image"]]


def test_stage_rejects_unknown_groups_and_folder_unsafe_names():
    with pytest.raises(ValueError, match="train must list groups"):
        Stage("a", ["text"], train=["projector"])
    with pytest.raises(ValueError, match="letters, digits"):
        Stage("a/b", ["text"])


def test_stages_run_in_order_skip_absent_modalities_and_freeze_other_groups(tmp_path):
    model, tokenizer = model_without_images()
    assert available_modalities(model) == ["text", "id"]
    seen, recorder, rows = record_active_modalities(model), Recorder(), ToyRows(8)
    stages = [
        Stage("align", ["text"], train=["mrc"], max_steps=2, learning_rate=1e-2),
        Stage("image", ["text", "image"], max_steps=2),
        Stage("lora", ["text", "id"], train=["lora", "spae"], lora=True, max_steps=3, learning_rate=1e-2),
    ]
    trained = run_mpo(
        model,
        stages,
        toy_args(tmp_path),
        rows,
        ToyCollator(tokenizer, model.config),
        callbacks=[recorder],
        lora_kwargs={"r": 4},
    )
    assert isinstance(trained, PeftModel)
    assert [(s["dir"], s["changed"]) for s in recorder.stages] == [
        ("stage-0-align", {"mrc"}),
        ("stage-2-lora", {"lora", "spae"}),
    ]
    # The switch is model state set before train(): the very first batch of each stage already uses it.
    assert seen == [["text"]] * 2 + [["text", "id"]] * 3
    # 8 rows in batches of 4: the 3-step stage starts a second epoch, which is told to the dataset.
    assert set(rows.epochs) == {0, 1} and rows.epochs[-1] == 1
    assert not (tmp_path / "stage-1-image").exists()
    assert (tmp_path / "stage-0-align" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "stage-2-lora" / "final" / "adapter_model.safetensors").is_file()
    done = json.loads((tmp_path / "stage-2-lora" / "mpo_stage_done.json").read_text())
    assert done == {"stage_index": 2, "stage_name": "lora", "global_step": 3}


def test_callback_tells_the_dataset_the_epoch_now_starting():
    # Under DDP accelerate skips dataset.set_epoch when the sampler has its own, so MPOCallback does it.
    rows = ToyRows(4)
    callback = MPOCallback(None, Stage("s", ["text"]), 0, rows)
    for epoch in (0.0, 1.0, 2.5):  # fresh start, epoch boundary, resumed mid-epoch
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
    assert rows.epochs == [0, 1, 2]


class StagedRows(ToyRows):
    """Rows whose length depends on the stage, like the benchmarks' per-stage slices of the training samples."""

    def __init__(self, lengths: list[int]):
        super().__init__(sum(lengths))
        self.lengths, self.stage = lengths, 0

    def __len__(self) -> int:
        return self.lengths[self.stage]

    def set_stage(self, index: int) -> None:
        self.stage = index


def test_a_stage_in_epochs_is_sized_by_its_own_slice_of_the_dataset(tmp_path):
    model, tokenizer = tiny_speeder()
    stages = [Stage(name, ["text"], num_train_epochs=1.0) for name in ("short", "long")]
    run_mpo(model, stages, toy_args(tmp_path), StagedRows([4, 12]), ToyCollator(tokenizer, model.config))
    steps = [json.loads((tmp_path / folder / "mpo_stage_done.json").read_text())["global_step"]
             for folder in ("stage-0-short", "stage-1-long")]  # fmt: skip
    # batches of 4: one step over the first slice, three over the second (not the first slice's length again)
    assert steps == [1, 3]


def test_mix_from_switches_modalities_per_step(tmp_path):
    model, tokenizer = tiny_speeder()
    seen = record_active_modalities(model)
    stage = Stage("mix", ["text", "image"], mix_from=["text"], max_steps=6)
    run_mpo(model, [stage], toy_args(tmp_path, seed=3), ToyRows(8), ToyCollator(tokenizer, model.config))
    # Step s keeps the old modalities with probability 1 - s/6: always at s = 0, and the draws are seeded.
    expected = [["text"] if random.Random(f"3-0-{s}").random() < 1 - s / 6 else ["text", "image"] for s in range(6)]
    assert seen == expected and seen[0] == ["text"] and ["text", "image"] in seen
    assert model.active_modalities == ["text", "image"]


def test_interrupted_run_resumes_in_the_same_stage_and_step(tmp_path):
    stages = [
        Stage("align", ["text"], max_steps=2, learning_rate=1e-2),
        Stage("text", ["text", "id"], train=["mrc", "spae", "lora"], lora=True, max_steps=4, learning_rate=1e-2),
    ]
    lora = {"r": 4, "dropout": 0.0}

    def run(output_dir, callbacks, resume=None):
        model, tokenizer = tiny_speeder()
        args = toy_args(output_dir, save_steps=2, save_strategy="steps")
        collator = ToyCollator(tokenizer, model.config)
        trained = run_mpo(
            model,
            stages,
            args,
            ToyRows(8),
            collator,
            callbacks=callbacks,
            resume_from_checkpoint=resume,
            lora_kwargs=lora,
        )
        return {n: p.detach().clone() for n, p in trained.named_parameters()}

    reference = run(tmp_path / "reference", [])
    with pytest.raises(Interrupt):
        run(tmp_path / "run", [KillAt("stage-1-text", 3)])
    state = json.loads((tmp_path / "run" / "stage-1-text" / "checkpoint-2" / "mpo_state.json").read_text())
    assert (state["stage_index"], state["stage_name"], state["global_step"]) == (1, "text", 2)
    assert not (tmp_path / "run" / "stage-1-text" / "mpo_stage_done.json").exists()
    assert has_progress(tmp_path / "run")

    shutil.copytree(tmp_path / "run", tmp_path / "run-by-path")
    # A kill during the next save leaves a checkpoint without trainer_state.json: resuming skips it.
    partial = tmp_path / "run" / "stage-1-text" / "checkpoint-4"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"")
    recorder = Recorder()
    resumed = run(tmp_path / "run", [recorder], resume=True)
    # Only the interrupted stage trains again, from its step-2 checkpoint to its 4 steps.
    assert [(s["dir"], s["start_step"], s["end_step"]) for s in recorder.stages] == [("stage-1-text", 2, 4)]
    # Same result as the uninterrupted run: stage 0 came back from its saved weights, stage 1 from its checkpoint.
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=0, msg=name)

    # Naming the checkpoint works the same; resuming a finished run trains nothing and reloads the final weights.
    by_path = run(tmp_path / "run-by-path", [], resume=str(tmp_path / "run-by-path" / "stage-1-text" / "checkpoint-2"))
    recorder = Recorder()
    finished = run(tmp_path / "run", [recorder], resume=True)
    assert recorder.stages == []
    for name in reference:
        torch.testing.assert_close(by_path[name], reference[name], atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(finished[name], reference[name], atol=1e-6, rtol=0, msg=name)


def test_schedules_that_cannot_run_fail_before_training(tmp_path):
    model, tokenizer = tiny_speeder()
    collator = ToyCollator(tokenizer, model.config)
    early_lora = [Stage("a", ["text"], train=["lora"]), Stage("b", ["text"], lora=True)]
    with pytest.raises(ValueError, match="trains 'lora' but no stage up to it sets lora=True"):
        run_mpo(model, early_lora, toy_args(tmp_path), ToyRows(4), collator)
    llm_after_lora = [Stage("a", ["text"], lora=True), Stage("b", ["text"], train=["llm"])]
    with pytest.raises(ValueError, match="trains 'llm' on a LoRA model"):
        run_mpo(model, llm_after_lora, toy_args(tmp_path), ToyRows(4), collator)
    assert not any(tmp_path.iterdir())


def test_resume_without_progress_raises(tmp_path):
    model, tokenizer = tiny_speeder()
    # A checkpoint whose save was cut short is no progress: has_progress agrees with run_mpo.
    (tmp_path / "stage-0-align" / "checkpoint-1").mkdir(parents=True)
    assert not has_progress(tmp_path)
    with pytest.raises(ValueError, match="no finished MPO stage and no checkpoint"):
        run_mpo(
            model,
            [Stage("align", ["text"], max_steps=1)],
            toy_args(tmp_path),
            ToyRows(4),
            ToyCollator(tokenizer, model.config),
            resume_from_checkpoint=True,
        )
