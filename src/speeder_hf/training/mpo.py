"""MPO, Speeder's staged curriculum over modalities and trainable parts (docs/design.md, "The model"): the runner.

Each stage is its own `trainer.train()` with a fresh optimizer and schedule over exactly the parameters it trains,
because a callback can neither change the optimizer's parameter set nor reach a batch the dataloader has already
prefetched. The active modalities are model state read in `forward` (`model.set_active_modalities`). Progress is
on disk (`mpo_checkpoints`), so `run_mpo(..., resume_from_checkpoint=True)` continues an interrupted run in the right
stage at the right step. The schedule itself (`Stage`, `default_stages`, the parameter groups) is `mpo_schedule`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import TrainerCallback, TrainingArguments

from ..json_files import write_json
from .lora import apply_lora
from .mpo_checkpoints import DONE_FILE, FINAL_DIR, STATE_FILE, has_progress, load_final, resume_point, stage_folder
from .mpo_schedule import GROUPS, Stage, available_modalities, default_stages, parameter_group, set_trainable
from .trainer import SpeederTrainer

logger = logging.getLogger(__name__)


class MPOCallback(TrainerCallback):
    """Stage bookkeeping inside one stage's `train()`: redraws training negatives each epoch (`set_epoch`), applies
    `mix_from` per step, and writes `mpo_state.json` into every checkpoint.

    `set_epoch` reaches the dataset of the main process; with `persistent_workers=True` worker copies keep their
    first epoch, so leave persistent workers off for datasets that redraw per epoch.
    """

    def __init__(self, model, stage: Stage, stage_index: int, train_dataset: Any = None, seed: int = 0):
        self.model, self.stage, self.stage_index = model, stage, stage_index
        self.train_dataset, self.seed = train_dataset, seed

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.train_dataset, "set_epoch"):
            # state.epoch is fractional mid-epoch (and restored on resume); its floor is the epoch now starting.
            self.train_dataset.set_epoch(int((state.epoch or 0.0) + 1e-6))

    def on_step_begin(self, args, state, control, **kwargs):
        # The forward of this step runs after this hook, so a model-side switch applies to it (a collator-side one
        # would not: its batches are already built).
        if self.stage.mix_from is None or not state.max_steps:
            return
        keep_old = 1.0 - state.global_step / state.max_steps
        # Seeded by stage and step: a resumed run redraws the same choices, and all processes agree.
        draw = random.Random(f"{self.seed}-{self.stage_index}-{state.global_step}").random()
        self.model.set_active_modalities(self.stage.mix_from if draw < keep_old else self.stage.modalities)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            write_json(checkpoint / STATE_FILE, self.progress(state))

    def progress(self, state) -> dict[str, Any]:
        return {
            "stage_index": self.stage_index,
            "stage_name": self.stage.name,
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "stage": asdict(self.stage),
        }


def run_mpo(
    model,
    stages: Sequence[Stage],
    training_args: TrainingArguments,
    train_dataset,
    data_collator,
    eval_dataset=None,
    callbacks: list[TrainerCallback] | None = None,
    resume_from_checkpoint: bool | str | None = None,
    lora_kwargs: dict[str, Any] | None = None,
    processing_class=None,
):
    """Runs the MPO stages in order and returns the trained model (a `PeftModel` once a stage used LoRA).

    For each stage: skip it (with a log line) if one of its modalities is absent from the model's catalog;
    wrap the model with LoRA if the stage asks for it; set `requires_grad` by group; switch the active modalities;
    run a new [`SpeederTrainer`] with `training_args` adapted (`output_dir=<output_dir>/stage-<i>-<name>`, the
    stage's learning rate, length and warmup); save the final trainable state (adapter + MRC/SPAE for a PEFT
    model, else the full model, as safetensors) and a done marker.

    Args:
        model: a [`SpeederForSequentialRec`] (or one already wrapped by `apply_lora`) with its catalog installed.
        stages: the schedule, e.g. `default_stages(available_modalities(model))`.
        training_args: shared settings; `output_dir` is the run's root.
        train_dataset, data_collator, eval_dataset, callbacks, processing_class: passed to each stage's trainer.
            A `train_dataset` with `set_epoch(epoch)` is told each epoch (to redraw training negatives), one with
            `set_stage(index)` the index of each stage before its trainer is built (so a stage measured in epochs
            is sized by what the dataset then holds).
        resume_from_checkpoint: True to continue the run found in `output_dir` (the first stage without a done
            marker, from its latest checkpoint; earlier stages are reloaded from their `final/` weights), or the
            path of a checkpoint written by a stage of this run.
        lora_kwargs: keyword arguments of `apply_lora` (r, alpha, dropout, target_modules).
    """
    stages = list(stages)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"Stage names must be unique, got {names}.")
    root = Path(training_args.output_dir)
    present = available_modalities(model)
    runnable = []
    for index, stage in enumerate(stages):
        missing = [m for m in stage.modalities if m not in present]
        if missing:
            logger.warning(
                "MPO: skipping stage %d %r: modalities %s are absent from the catalog.", index, stage.name, missing
            )
        else:
            runnable.append(index)
    _check_schedule(model, stages, runnable)

    resume_index, checkpoint = 0, None  # stages before resume_index are done
    if resume_from_checkpoint:
        resume_index, checkpoint = resume_point(root, stages, runnable, resume_from_checkpoint)

    for index in runnable:
        stage = stages[index]
        stage_dir = root / stage_folder(index, stage)
        if stage.lora and not isinstance(model, PeftModel):
            # The adapters' random initial weights come from the run's seed, not from whatever drew from torch's
            # generator before: a resumed run skips the earlier stages' training, and must still start this stage
            # (when it has no checkpoint of it) from the adapters an uninterrupted run started from.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(training_args.seed)
                model = apply_lora(model, **(lora_kwargs or {}))
        if index < resume_index:
            load_final(model, stage_dir / FINAL_DIR)
            model.set_active_modalities(stage.modalities)
            logger.info("MPO: stage %d %r already done; reloaded %s.", index, stage.name, stage_dir / FINAL_DIR)
            continue
        counts = set_trainable(model, stage.train)
        model.set_active_modalities(stage.modalities)
        logger.info(
            "MPO: stage %d %r, modalities %s, trainable %s%s.",
            index,
            stage.name,
            stage.modalities,
            counts,
            f", resuming from {checkpoint}" if index == resume_index and checkpoint else "",
        )
        if hasattr(train_dataset, "set_stage"):
            # Before the trainer exists: it sizes the stage (steps, warmup, schedule) from len(train_dataset). Told
            # by index, not counted: a resumed run starts directly in a later stage.
            train_dataset.set_stage(index)
        trainer = SpeederTrainer(
            model=model,
            args=_stage_args(training_args, stage, index, stage_dir),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            processing_class=processing_class,
            callbacks=[MPOCallback(model, stage, index, train_dataset, training_args.seed), *(callbacks or [])],
            stage_name=stage.name,
        )
        trainer.train(resume_from_checkpoint=str(checkpoint) if index == resume_index and checkpoint else None)
        model.set_active_modalities(stage.modalities)  # mixing may have left the last step on `mix_from`
        trainer.save_model(str(stage_dir / FINAL_DIR))
        if trainer.is_world_process_zero():
            marker = {"stage_index": index, "stage_name": stage.name, "global_step": trainer.state.global_step}
            write_json(stage_dir / DONE_FILE, marker)
        trainer.accelerator.wait_for_everyone()
        # Drop this stage's optimizer state (the accelerator keeps references) before the next stage builds its own.
        trainer.accelerator.free_memory()
    return model


def _check_schedule(model, stages: list[Stage], runnable: list[int]) -> None:
    """Fails before any training on a schedule that cannot run: LoRA trained before any stage adds it, or the
    LLM's own weights trained once adapters exist (PEFT checkpoints would not save them)."""
    wrapped = isinstance(model, PeftModel)
    for index in runnable:
        stage = stages[index]
        wrapped = wrapped or stage.lora
        if "lora" in stage.train and not wrapped:
            raise ValueError(f"Stage {index} {stage.name!r} trains 'lora' but no stage up to it sets lora=True.")
        if "llm" in stage.train and wrapped:
            raise ValueError(
                f"Stage {index} {stage.name!r} trains 'llm' on a LoRA model; PEFT checkpoints save only adapters and "
                "MRC/SPAE, so full LLM training must come before the first LoRA stage."
            )


def _stage_args(args: TrainingArguments, stage: Stage, index: int, stage_dir: Path) -> TrainingArguments:
    changes: dict[str, Any] = {
        "output_dir": str(stage_dir),
        "learning_rate": stage.learning_rate,
        "warmup_steps": stage.warmup_ratio,  # < 1: a fraction of the stage's steps
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "run_name": f"{args.run_name or Path(args.output_dir).name}/{stage_folder(index, stage)}",
    }
    if stage.max_steps is not None:
        changes["max_steps"] = stage.max_steps
    if stage.num_train_epochs is not None:
        changes["num_train_epochs"] = stage.num_train_epochs
        changes.setdefault("max_steps", -1)
    return replace(args, **changes)


__all__ = [
    "GROUPS",
    "MPOCallback",
    "Stage",
    "available_modalities",
    "default_stages",
    "has_progress",
    "parameter_group",
    "run_mpo",
    "set_trainable",
    "stage_folder",
]
