"""Training a compared method with the project's own MPO runner: its stages, how the training samples are split
over them, and the micro batch that fits."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.baselines import LlaraCurriculumCallback

from .bench_data import BenchData
from .methods import MethodSpec, make_collator


def make_stages(spec: MethodSpec, modalities: Sequence[str], learning_rate: float, align_learning_rate: float):
    """The training stages of a method, each one epoch over its share of the training samples."""
    from speeder_hf.training.mpo import Stage, default_stages

    if spec.schedule == "mpo":
        stages = default_stages(
            modalities,
            num_train_epochs=1.0,
            learning_rate=learning_rate,
            align_learning_rate=align_learning_rate,
            warmup_ratio=0.03,
        )
        # Groups without parameters (SPAE switched off) cannot be asked to train.
        return [replace(s, train=[g for g in s.train if g in spec.trains]) for s in stages]
    name = spec.prompt_style if spec.prompt_style != "speeder" else "all"
    return [
        Stage(
            name,
            list(modalities),
            list(spec.trains),
            lora=True,
            learning_rate=learning_rate,
            num_train_epochs=1.0,
            warmup_ratio=0.03,
        )
    ]


def stage_lengths(total: int, num_stages: int, final_share: float | None = None) -> list[int]:
    """How many of `total` training samples each of `num_stages` stages gets: equal slices, or `final_share` of them
    for the last stage (where every modality is on) and equal slices of the rest for the others."""
    if final_share is not None and not 0 < final_share < 1:  # checked for one-stage methods too: no silent ignore
        raise ValueError(f"final_stage_share must lie strictly between 0 and 1, not {final_share}.")
    if final_share is None or num_stages == 1:
        lengths = [total // num_stages] * num_stages
    else:
        final = round(total * final_share)
        lengths = [(total - final) // (num_stages - 1)] * (num_stages - 1) + [final]
    if min(lengths) == 0:
        raise ValueError(f"{total} training samples cannot be split over {num_stages} stages as {lengths}.")
    return lengths


class StageSlices(torch.utils.data.Dataset):
    """The training samples split into one disjoint slice per MPO stage (`stage_lengths`), so a method with S stages
    sees each sample once in all (the budget of a one-stage method), not the same first samples S times. `run_mpo`
    calls `set_stage` before each stage's trainer sizes the stage from `len()` (also when a resumed run starts in a
    later stage). Indices reach `base` unchanged, so per-sample training candidates (`CandidateSamplingDataset`:
    seeded by epoch and index) are the same for every method."""

    def __init__(self, base, lengths: Sequence[int]):
        self.base, self.lengths, self.stage = base, list(lengths), 0
        if sum(self.lengths) > len(base):
            raise ValueError(f"stage slices of {self.lengths} samples need more than the {len(base)} given.")
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]

    def __len__(self) -> int:
        return self.lengths[self.stage]

    def __getitem__(self, index: int):
        return self.base[self.offsets[self.stage] + int(index)]

    def set_stage(self, index: int) -> None:
        self.stage = index

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)


def train_method(
    spec: MethodSpec,
    model,
    tokenizer,
    data: BenchData,
    train_rows,
    output_dir: Path,
    batch_size: int,
    micro_batch_size: int,
    learning_rate: float,
    align_learning_rate: float,
    lora_r: int,
    lora_alpha: int,
    seed: int,
    num_candidates: int,
    bf16: bool,
    save_steps: int | None = None,
    resume: bool = False,
    callbacks: list | None = None,
    final_stage_share: float | None = None,
):
    """Trains `model` with `run_mpo` (MPO stages, or a single LoRA stage) on `train_rows`; returns the trained
    model (a `PeftModel`), the stages run and how many training samples each stage saw.

    Args:
        save_steps: checkpoint every this many optimizer steps (the last one kept per stage); None: no checkpoints.
        resume: continue the run in `output_dir` (see `run_mpo`'s `resume_from_checkpoint=True`).
        callbacks: more `TrainerCallback`s for every stage.
        final_stage_share: the last stage's share of the samples (None: equal slices; see `stage_lengths`).
    """
    from transformers import TrainingArguments

    from speeder_hf.data import CandidateSamplingDataset
    from speeder_hf.training.mpo import run_mpo

    stages = make_stages(spec, model.config.modalities, learning_rate, align_learning_rate)
    lengths = stage_lengths(len(train_rows), len(stages), final_stage_share)
    dataset = StageSlices(CandidateSamplingDataset(train_rows, data.rec, num_candidates, seed=seed), lengths)
    callbacks = list(callbacks or [])
    if spec.prompt_style == "llara":
        callbacks.append(LlaraCurriculumCallback(model, seed=seed))
    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} is not a multiple of the micro batch {micro_batch_size}.")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=batch_size // micro_batch_size,
        logging_steps=20,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        bf16=bf16,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="cosine",
    )
    model = run_mpo(
        model,
        stages,
        args,
        dataset,
        make_collator(spec, model, tokenizer, data),
        callbacks=callbacks,
        lora_kwargs={"r": lora_r, "alpha": lora_alpha},
        processing_class=tokenizer,
        resume_from_checkpoint=resume,
    )
    check_stage_steps(output_dir, stages, lengths, micro_batch_size, batch_size // micro_batch_size)
    return model, stages, lengths


def check_stage_steps(output_dir: Path, stages, lengths: Sequence[int], micro_batch: int, accumulation: int) -> None:
    """Fails unless every stage took the optimizer steps its slice of the samples calls for, so the budget that a
    result file records (`train_samples_per_stage`) is the one that trained."""
    from speeder_hf.training.mpo import DONE_FILE, stage_folder

    for index, (stage, length) in enumerate(zip(stages, lengths)):
        done = json.loads((output_dir / stage_folder(index, stage) / DONE_FILE).read_text())
        expected = math.ceil(math.ceil(length / micro_batch) / accumulation)
        if done["global_step"] != expected:
            raise RuntimeError(
                f"MPO stage {index} {stage.name!r} took {done['global_step']} optimizer steps, but its {length} "
                f"samples in micro batches of {micro_batch} x {accumulation} call for {expected}."
            )


def micro_batch_for(
    spec: MethodSpec, model, tokenizer, data: BenchData, rows, batch_size: int, max_tokens: int
) -> tuple[int, int]:
    """The largest micro batch (a divisor of `batch_size`) whose longest training prompt fits `max_tokens` tokens,
    from the rows given; returns it and that longest prompt length."""
    collator = make_collator(spec, model, tokenizer, data)
    longest = max(len(collator.encode(row).input_ids) for row in rows)
    micro = batch_size
    while micro > 1 and (micro * longest > max_tokens or batch_size % micro):
        micro -= 1
    return micro, longest
