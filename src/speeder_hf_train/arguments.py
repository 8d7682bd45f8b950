"""The main job's arguments, in groups that the other command lines share: `speeder-hf build-catalog` takes the
item-feature, SASRec and sample groups, the accuracy benchmark the backbone and sample groups, and so on. A shared
group is the job's own dataclass, inherited, so each flag has one spelling, one default and one help text wherever
it is parsed (`transformers.HfArgumentParser` reads the inherited fields as the job's)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

TRAINING_TARGETS = ("held_out", "all")
PRIOR_MODES = ("in_training", "after_training", "none")


@dataclass
class SampleArguments:
    """What one prompt holds, and the seed of the split and its sampled candidates."""

    max_history_len: int = field(default=20, metadata={"help": "Most recent history items per prompt."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per sample, target included."})
    seed: int = field(default=0)


@dataclass
class ItemFeatureArguments:
    """The item catalog's content modalities and their frozen encoders."""

    modalities: str = field(default="text,image,id", metadata={"help": "Modalities to use, in gate order."})
    text_encoder: str | None = field(default=None, metadata={"help": "Text encoder folder; None = all-MiniLM-L6-v2."})
    text_max_length: int = field(default=32, metadata={"help": "Tokens per item text for the text encoder."})
    image_encoder: str | None = field(default=None, metadata={"help": "Image encoder; None = EfficientNet-Lite0."})
    cache_dir: str | None = field(default=None, metadata={"help": "Feature cache (default ~/.cache/speeder_hf)."})


@dataclass
class SASRecArguments:
    """The SASRec that gives the `id` modality, retrieves candidates and serves as the collaborative prior."""

    sasrec_epochs: int = field(default=20, metadata={"help": "SASRec epochs (early stopping on validation)."})
    sasrec_loss: str = field(
        default="sampled", metadata={"help": "SASRec loss: ce (full softmax), sampled (shared negatives) or bce."}
    )
    sasrec_max_len: int = field(default=20, metadata={"help": "SASRec sequence length."})
    sasrec_dropout: float = field(default=0.5, metadata={"help": "SASRec dropout (0.5 suits sparse Amazon data)."})


@dataclass
class BackboneArguments:
    """The causal LM Speeder wraps, and its LoRA adapter."""

    llm: str = field(default="smollm2", metadata={"help": "'smollm2' (offline default) or a local folder / Hub id."})
    llm_layers: int | None = field(
        default=None, metadata={"help": "Keep only the LLM's first N layers (a compute budget knob; None = all)."}
    )
    lora_r: int = field(default=8)
    lora_alpha: int = field(default=16)


@dataclass
class FinetuneArguments(SampleArguments, BackboneArguments, SASRecArguments, ItemFeatureArguments):
    """Every knob of the main job: the shared groups plus the job's own. The defaults are a small CPU budget;
    `make demo` sets its own (`DEMO_FLAGS`)."""

    dataset: str = field(
        default="beauty",
        metadata={"help": "Dataset name (beauty, sports, movielens) or a folder (S3Rec, LLaRA, RecBole, ...)."},
    )
    output_dir: str = field(default="outputs/speeder-beauty", metadata={"help": "Where the model and results go."})
    prompt_style: str = field(default="speeder", metadata={"help": "speeder, llara or text."})
    answer_mode: str = field(default="index", metadata={"help": "index (label token) or title (generated)."})
    answer_loss: str = field(
        default="labels", metadata={"help": "Index answers: labels (softmax over candidate labels) or vocab."}
    )
    training_targets: str = field(
        default="held_out",
        metadata={
            "help": "held_out: train on each user's last training item, with the id modality and the prior from a "
            "SASRec that never trained on it; all: every training prefix, one SASRec."
        },
    )
    collaborative_prior: str = field(
        default="after_training",
        metadata={
            "help": "SASRec's candidate scores in Speeder's, with a fitted weight (needs the id modality): in_training "
            "(the LLM learns what SASRec misses), after_training (added to the trained LLM's scores) or none."
        },
    )
    content_prior: str = field(
        default="auto",
        metadata={
            "help": "Modalities whose feature similarity between candidate and history joins the trained LLM's "
            "scores with fitted weights: comma-separated, auto (every modality but id) or none."
        },
    )
    label_logits: bool = field(
        default=False,
        metadata={
            "help": "Count the LM head's label-token logits in the candidate scores (else pointer + prior only)."
        },
    )
    calibration_rows: int = field(
        default=2000,
        metadata={"help": "Validation users (the split's last ones) that the priors' weights are fitted on."},
    )
    max_train_samples: int | None = field(default=4000, metadata={"help": "Subsample training prefixes (None=all)."})
    stage_steps: int = field(default=40, metadata={"help": "Optimizer steps per MPO stage."})
    final_stage_steps: int | None = field(
        default=None, metadata={"help": "Steps of the last stage (all modalities); None = stage_steps."}
    )
    batch_size: int = field(default=8, metadata={"help": "Per-device training batch size."})
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak LR of the LoRA stages."})
    align_learning_rate: float = field(default=2e-3, metadata={"help": "Peak LR of the align stage (MRC + SPAE)."})
    mpo_mix: bool = field(default=False, metadata={"help": "LLaRA-style probabilistic modality mixing per stage."})
    eval_split: str = field(default="test", metadata={"help": "Split evaluated: test, or validation for tuning."})
    max_eval_samples: int | None = field(default=200, metadata={"help": "Users evaluated (None = all)."})
    eval_batch_size: int = field(default=16)
    num_examples: int = field(default=3, metadata={"help": "Users whose top-5 recommendations are printed."})
    resume: bool = field(
        default=False,
        metadata={
            "help": "Resume an interrupted MPO run from its checkpoints (one stopped before its first checkpoint "
            "starts afresh)."
        },
    )
    bf16: bool = field(default=False, metadata={"help": "Train in bfloat16 mixed precision (GPU)."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to publish the model to."})

    def __post_init__(self) -> None:
        # Checked here, not where it is used: that is after minutes of training.
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"eval_split must be 'test' or 'validation', got {self.eval_split!r}.")
        if self.collaborative_prior not in PRIOR_MODES:
            raise ValueError(f"collaborative_prior must be one of {PRIOR_MODES}, got {self.collaborative_prior!r}.")
        if self.training_targets not in TRAINING_TARGETS:
            raise ValueError(f"training_targets must be one of {TRAINING_TARGETS}, got {self.training_targets!r}.")
        # A negative sample count on the command line means "all".
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                setattr(self, name, None)


def job_field(name: str, default: Any = MISSING, help: str | None = None) -> Any:
    """A dataclass field with the default and help of `FinetuneArguments.<name>`, for a command line that takes
    one of the job's knobs without its whole group, or with another default: the same flag spelling and meaning.

    Args:
        default, help: override the job's, where that command's budget or wording differs.
    """
    job = {f.name: f for f in fields(FinetuneArguments)}[name]
    metadata = dict(job.metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=job.default if default is MISSING else default, metadata=metadata)


__all__ = [
    "BackboneArguments",
    "FinetuneArguments",
    "ItemFeatureArguments",
    "SASRecArguments",
    "SampleArguments",
    "job_field",
]
