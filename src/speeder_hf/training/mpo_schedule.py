"""MPO's schedule: the stages of the curriculum over modalities and trainable parts, and the parameter groups a
stage trains (docs/design.md, "The model"). `mpo.run_mpo` runs a schedule; `mpo_checkpoints` keeps its progress."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

GROUPS = ("mrc", "spae", "head", "lora", "llm")
# Present only in some models (the candidate pointer exists in index mode only); asking for it elsewhere is no error.
OPTIONAL_GROUPS = ("head",)
# The curriculum's modality order (text, then image, then the collaborative id); stages list modalities in it.
CANONICAL_MODALITIES = ("text", "image", "id")


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


__all__ = [
    "CANONICAL_MODALITIES",
    "GROUPS",
    "Stage",
    "available_modalities",
    "default_stages",
    "parameter_group",
    "set_trainable",
]
