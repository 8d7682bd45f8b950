"""MPO, Speeder's staged curriculum over modalities and trainable parts (docs/design.md, "The model").

Each stage is its own `trainer.train()` with a fresh optimizer and schedule over exactly the parameters it trains,
because a callback can neither change the optimizer's parameter set nor reach a batch the dataloader has already
prefetched. The active modalities are model state read in `forward` (`model.set_active_modalities`). Progress is
on disk: each stage writes its checkpoints under `<output_dir>/stage-<i>-<name>/` (each with an `mpo_state.json`),
then its final trainable state under `final/` and a done marker, so `run_mpo(..., resume_from_checkpoint=True)`
continues an interrupted run in the right stage at the right step.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint, load_sharded_checkpoint, sort_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .lora import apply_lora
from .trainer import SpeederTrainer

logger = logging.getLogger(__name__)

GROUPS = ("mrc", "spae", "head", "lora", "llm")
# Present only in some models (the candidate pointer exists in index mode only); asking for it elsewhere is no error.
OPTIONAL_GROUPS = ("head",)
# The curriculum's modality order (text, then image, then the collaborative id); stages list modalities in it.
CANONICAL_MODALITIES = ("text", "image", "id")
STATE_FILE = "mpo_state.json"
DONE_FILE = "mpo_stage_done.json"
FINAL_DIR = "final"


@dataclass
class Stage:
    """One MPO stage.

    Args:
        name: stage name (letters, digits, `+ - _ .`), used in its output folder `stage-<i>-<name>`.
        modalities: modalities the model uses during the stage.
        train: parameter groups that train, among `"mrc"` (experts + gate + norm), `"spae"` (position and recency
            embeddings), `"head"` (the candidate pointer and the collaborative prior's weight, when the model has
            them), `"lora"` (adapters) and `"llm"`
            (the language model's own weights, only without LoRA); all other parameters are frozen.
        lora: wrap the model with `apply_lora` at this stage if it is not wrapped yet; later stages keep the adapters.
        learning_rate: peak learning rate of the stage's schedule.
        max_steps, num_train_epochs: stage length; None inherits the value of the `TrainingArguments`.
        warmup_ratio: fraction of the stage's steps spent in linear warmup, in [0, 1).
        mix_from: LLaRA-style curriculum mixing: at step s of S, the step uses `mix_from` modalities instead of
            `modalities` with probability 1 - s / S (so the stage starts on the old modalities and ends on the new).
    """

    name: str
    modalities: list[str]
    train: list[str] = field(default_factory=lambda: ["mrc", "spae", "head"])
    lora: bool = False
    learning_rate: float = 2e-4
    max_steps: int | None = None
    num_train_epochs: float | None = None
    warmup_ratio: float = 0.0
    mix_from: list[str] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_+.-]+", self.name):
            raise ValueError(f"Stage name {self.name!r} must use only letters, digits and '+-_.' (it names a folder).")
        self.modalities, self.train = list(self.modalities), list(self.train)
        self.mix_from = list(self.mix_from) if self.mix_from is not None else None
        if not self.modalities:
            raise ValueError(f"Stage {self.name!r} has no modalities.")
        unknown = [g for g in self.train if g not in GROUPS]
        if unknown or not self.train:
            raise ValueError(f"Stage {self.name!r}: train must list groups among {GROUPS}, got {self.train}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"Stage {self.name!r}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")


def default_stages(
    available_modalities: Sequence[str],
    max_steps: int | None = None,
    num_train_epochs: float | None = None,
    learning_rate: float = 2e-4,
    align_learning_rate: float = 1e-3,
    warmup_ratio: float = 0.03,
    mix: bool = False,
) -> list[Stage]:
    """The default MPO schedule for the modalities a dataset has.

    1. `align`: text only; MRC + SPAE (+ the candidate pointer) train, the LLM is frozen.
    2. `text`: text; LoRA added (MRC + SPAE + pointer + LoRA train).
    3. `text+image`: when images exist.
    4. `all`: every available modality (text + image + id), when that adds something to the previous stage.

    Without text the first two stages use the first available modality instead (named after it).

    Args:
        available_modalities: modalities present in the catalog (see `available_modalities`).
        max_steps, num_train_epochs: per-stage length (None inherits from the `TrainingArguments`).
        learning_rate: peak learning rate of the LoRA stages; `align_learning_rate` for the first stage, where only
            the freshly initialised MRC and SPAE train.
        warmup_ratio: per-stage warmup fraction.
        mix: give each stage that adds modalities `mix_from` = the previous stage's modalities.
    """
    available = [m for m in CANONICAL_MODALITIES if m in available_modalities]
    available += [m for m in available_modalities if m not in available]
    if not available:
        raise ValueError("default_stages needs at least one available modality.")
    base = "text" if "text" in available else available[0]
    common = {"max_steps": max_steps, "num_train_epochs": num_train_epochs, "warmup_ratio": warmup_ratio}
    stages = [
        Stage("align", [base], ["mrc", "spae", "head"], learning_rate=align_learning_rate, **common),
        Stage(base, [base], ["mrc", "spae", "head", "lora"], lora=True, learning_rate=learning_rate, **common),
    ]
    following = [("text+image", ["text", "image"])] if base == "text" and "image" in available else []
    following.append(("all", available))
    for name, modalities in following:
        previous = stages[-1].modalities
        if set(modalities) != set(previous):
            mix_from = list(previous) if mix else None
            stages.append(
                Stage(
                    name,
                    modalities,
                    ["mrc", "spae", "head", "lora"],
                    learning_rate=learning_rate,
                    mix_from=mix_from,
                    **common,
                )
            )
    return stages


def available_modalities(model) -> list[str]:
    """The model's modalities that at least one catalog item has (all of them when the model holds no catalog)."""
    modalities, presence = list(model.config.modalities), model.item_table.presence  # (N, M)
    if presence.shape[0] == 0:
        return modalities
    return [m for i, m in enumerate(modalities) if bool(presence[:, i].any())]


def parameter_group(name: str) -> str | None:
    """The MPO group of a parameter name (plain or PEFT-wrapped model); None for parameters that never train
    (the frozen originals PEFT keeps next to the trainable MRC / SPAE copies)."""
    if "lora_" in name:
        return "lora"
    if ".original_module." in name:
        return None
    name = name.removeprefix("base_model.model.")
    top = name.split(".", 1)[0]
    if top == "language_model":
        return "llm"
    if top in ("candidate_pointer", "content_prior"):
        return "head"
    if top == "collaborative_prior":
        return None if ".sasrec." in name else "head"  # SASRec stays frozen; its learned weight trains
    return top if top in ("mrc", "spae") else None


def set_trainable(model: torch.nn.Module, groups: Sequence[str]) -> dict[str, int]:
    """Sets `requires_grad` so that exactly the parameters of `groups` train; returns parameters per group.

    Raises:
        ValueError: if a requested group has no parameter (e.g. `"lora"` on a model without adapters).
    """
    counts = dict.fromkeys(groups, 0)
    for name, param in model.named_parameters():
        group = parameter_group(name)
        param.requires_grad_(group in counts)
        if group in counts:
            counts[group] += param.numel()
    empty = [g for g, n in counts.items() if n == 0 and g not in OPTIONAL_GROUPS]
    if empty:
        raise ValueError(f"No parameters in group(s) {empty} of {type(model).__name__} (is LoRA applied?).")
    return counts


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


def stage_folder(index: int, stage: Stage) -> str:
    """The folder, under the run's `output_dir`, where `run_mpo` writes stage `index` (checkpoints, `final/`, the
    done marker)."""
    return f"stage-{index}-{stage.name}"


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
        resume_index, checkpoint = _resume_point(root, stages, runnable, resume_from_checkpoint)

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
            _load_final(model, stage_dir / FINAL_DIR)
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


def _resume_point(
    root: Path, stages: list[Stage], runnable: list[int], resume_from_checkpoint: bool | str
) -> tuple[int, Path | None]:
    """The index of the stage to continue and the checkpoint to continue it from (None: start it afresh)."""
    done = []
    for index in runnable:
        marker = root / stage_folder(index, stages[index]) / DONE_FILE
        if not marker.is_file():
            break
        recorded = json.loads(marker.read_text())
        if recorded.get("stage_name") != stages[index].name:
            raise ValueError(f"{marker} belongs to stage {recorded.get('stage_name')!r}, not {stages[index].name!r}.")
        done.append(index)

    if not isinstance(resume_from_checkpoint, bool):
        checkpoint = Path(resume_from_checkpoint)
        if not (checkpoint / STATE_FILE).is_file():
            raise ValueError(f"{checkpoint} has no {STATE_FILE}: it is not a checkpoint written by run_mpo.")
        state = json.loads((checkpoint / STATE_FILE).read_text())
        index = state["stage_index"]
        if index >= len(stages) or stages[index].name != state["stage_name"]:
            raise ValueError(f"{checkpoint} belongs to stage {index} {state['stage_name']!r}, not in this schedule.")
        unfinished = [i for i in runnable if i < index and i not in done]
        if unfinished:
            raise ValueError(
                f"Cannot resume stage {index} from {checkpoint}: earlier stages {unfinished} are not done."
            )
        return index, checkpoint

    pending = [i for i in runnable if i not in done]
    if not pending:
        return len(stages), None
    index = pending[0]
    stage_dir = root / stage_folder(index, stages[index])
    last = _last_complete_checkpoint(stage_dir)
    if last is None and not done:
        raise ValueError(f"resume_from_checkpoint=True but {root} holds no finished MPO stage and no checkpoint.")
    if last is not None and (last / STATE_FILE).is_file():
        state = json.loads((last / STATE_FILE).read_text())
        if state["stage_index"] != index or state["stage_name"] != stages[index].name:
            raise ValueError(f"{last} records stage {state['stage_index']} {state['stage_name']!r}, expected {index}.")
    return index, last


def has_progress(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a run that `run_mpo(..., resume_from_checkpoint=True)` can continue: a finished
    stage or a checkpoint whose save completed."""
    stage_dirs = [d for d in Path(output_dir).glob("stage-*") if d.is_dir()]
    return any((d / DONE_FILE).is_file() or _last_complete_checkpoint(d) is not None for d in stage_dirs)


def _last_complete_checkpoint(stage_dir: Path) -> Path | None:
    """The latest checkpoint in `stage_dir` whose save finished: the Trainer's own `get_last_checkpoint`, checked
    for completeness. The Trainer writes `trainer_state.json` after the weights and optimizer and before it deletes
    older checkpoints, so a save cut short by a kill lacks it and the previous checkpoint is still there: the
    earlier ones are tried next, newest first."""
    if not stage_dir.is_dir():
        return None
    latest = get_last_checkpoint(str(stage_dir))
    if latest is None:
        return None
    earlier = [Path(p) for p in reversed(sort_checkpoints(str(stage_dir))) if Path(p) != Path(latest)]
    for checkpoint in [Path(latest), *earlier]:
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            return checkpoint
        logger.warning("MPO: %s is incomplete (its save was interrupted); trying an earlier checkpoint.", checkpoint)
    return None


def _load_final(model, folder: Path) -> None:
    """Loads a finished stage's saved state into `model` (adapter + MRC/SPAE for PEFT, else the full model)."""
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        unexpected = result.unexpected_keys
    elif (folder / SAFE_WEIGHTS_NAME).is_file():
        result = model.load_state_dict(safetensors.torch.load_file(folder / SAFE_WEIGHTS_NAME), strict=False)
        unexpected = result.unexpected_keys
        _check_only_tied_missing(model, result.missing_keys, folder)
    elif (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        result = load_sharded_checkpoint(model, str(folder), strict=False)
        unexpected = result.unexpected_keys
        _check_only_tied_missing(model, result.missing_keys, folder)
    else:
        raise FileNotFoundError(f"No saved stage weights ({SAFE_WEIGHTS_NAME} or an adapter) in {folder}.")
    if unexpected:
        raise ValueError(f"Weights in {folder} do not fit the model: unexpected keys {unexpected[:5]}.")


def _check_only_tied_missing(model: torch.nn.Module, missing: list[str], folder: Path) -> None:
    # save_pretrained leaves out tied duplicates (lm_head tied to the input embeddings); anything else is an error.
    state = model.state_dict()
    loaded_ptrs = {t.data_ptr() for k, t in state.items() if k not in missing}
    untied = [k for k in missing if state[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"Weights in {folder} lack keys {untied[:5]}.")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


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
]
