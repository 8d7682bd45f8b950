"""The methods and prompt styles the benchmarks compare, and building each one's model and collator with the
project's own classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.baselines import LlaraForSequentialRec, MLLMDataCollator, MLLMForSequentialRec
from speeder_hf import SpeederForSequentialRec
from speeder_hf.processing.collator import SpeederDataCollator

from .bench_data import BenchData


@dataclass(frozen=True)
class MethodSpec:
    """One compared method.

    Attributes:
        prompt_style: `speeder`, `llara`, `text` or `mllm` (see `speeder_hf.processing.prompts`).
        answer_mode: `index` (label scored in one pass) or `title` (generated, LLaRA parser).
        modalities: catalog modalities the model reads; None = all the catalog has.
        schedule: `mpo` (the default MPO stages), or `single` (one LoRA stage with every modality from the start).
        trains: parameter groups of the LoRA stage (`speeder_hf.training.mpo.GROUPS`).
        config: extra `SpeederConfig` fields.
        description: one line for the result files.
        collaborative_prior: how the prepared SASRec's candidate scores join the model's, with a fitted weight
            (`speeder_hf_train.finetune`'s `collaborative_prior`): "in_training", "after_training", or "" for none.
    """

    prompt_style: str
    answer_mode: str
    modalities: tuple[str, ...] | None
    schedule: str
    trains: tuple[str, ...]
    config: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    collaborative_prior: str = ""

    @property
    def needs_images(self) -> bool:
        return self.prompt_style == "mllm"


_NO_SPAE = (("spae_absolute", False), ("spae_relative", False))
# Speeder's candidate scores are the pointer's and the prior's (finetune's default): a fresh LM head's label logits
# are noise that training would first have to undo.
_POINTER = (("label_logits", False),)
METHODS: dict[str, MethodSpec] = {
    "speeder": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "Speeder: MRC gate + SPAE + MPO stages + SASRec prior", "after_training",
    ),
    "speeder_no_prior": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "w/o collaborative prior: the LLM's candidate scores alone",
    ),
    "speeder_no_gate": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), (("mrc_gate", False), *_POINTER),
        "w/o MRC gate: the experts of the available modalities are averaged", "after_training",
    ),
    "speeder_no_spae": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "head", "lora"), _NO_SPAE + _POINTER,
        "w/o SPAE: no position tokens, no recency", "after_training",
    ),
    "speeder_no_mpo": MethodSpec(
        "speeder", "index", None, "single", ("mrc", "spae", "head", "lora"), _POINTER,
        "w/o MPO: every modality and LoRA from the first step, one stage", "after_training",
    ),
    "speeder_text_only": MethodSpec(
        "speeder", "index", ("text",), "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "text modality only (align + text stages), with the prior", "after_training",
    ),
    "llara": MethodSpec(
        "llara", "title", ("id",), "single", ("mrc", "lora"), _NO_SPAE,
        "LLaRA: title + SASRec ID token per item, text-to-hybrid curriculum by global step, title answer",
    ),
    "text": MethodSpec(
        "text", "title", ("text",), "single", ("lora",), _NO_SPAE, "TALLRec-like: full item text, title answer"
    ),
    "mllm": MethodSpec(
        "mllm", "title", ("id",), "single", ("mrc", "lora"), _NO_SPAE,
        "uncompressed MLLM (LLaVA-like): title + image feature-map tokens + ID token per item, title answer",
    ),
}  # fmt: skip
SASREC = "sasrec"
# The efficiency benchmark compares the prompt styles, each with its method's model and answer protocol.
STYLE_METHODS = {"speeder": "speeder", "llara": "llara", "text": "text", "mllm": "mllm"}


def build_model(
    spec: MethodSpec,
    data: BenchData,
    llm: str,
    max_history_len: int,
    num_candidates: int,
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
):
    """A fresh model for `spec` around the backbone `llm` (its first `num_layers` layers when given), holding
    `data`'s features; returns `(model, tokenizer)`."""
    from speeder_hf.backbones import load_llm

    tokenizer, llm_model = load_llm(llm, dtype, num_layers)
    kwargs: dict[str, Any] = {
        "max_history_len": max_history_len,
        "num_candidates": num_candidates,
        # The config knows the three built-in styles; the mllm style is chosen per collator.
        "prompt_style": "llara" if spec.prompt_style == "mllm" else spec.prompt_style,
        "answer_mode": spec.answer_mode,
        **dict(spec.config),
    }
    model_class = SpeederForSequentialRec
    if spec.needs_images:
        if data.spatial is None:
            raise ValueError(f"The mllm style needs image feature maps, but dataset {data.name!r} has none.")
        kwargs.update(num_image_tokens=data.spatial.shape[1], image_feature_dim=data.spatial.shape[2])
        model_class = MLLMForSequentialRec
    elif spec.prompt_style == "llara":
        model_class = LlaraForSequentialRec
    prior = None
    if spec.collaborative_prior == "in_training":
        prior = data.held_out_sasrec or data.sasrec  # training's prior; evaluation swaps in data.sasrec
        if prior is None:
            raise ValueError(f"{data.name!r} has no prepared SASRec for the collaborative prior.")
    modalities = None if spec.modalities is None else list(spec.modalities)
    try:
        model = model_class.from_catalog(llm_model, tokenizer, data.catalog, modalities, prior, **kwargs)
    except KeyError as error:  # a modality the method reads that this dataset lacks
        raise ValueError(f"Dataset {data.name!r}: {error.args[0]}") from None
    if spec.needs_images:
        model.set_image_patches(torch.from_numpy(data.spatial))
    return model, tokenizer


def collator_class(spec: MethodSpec) -> type[SpeederDataCollator]:
    """The collator of a method's prompts: the baseline's own for the `mllm` style, Speeder's for the others."""
    return MLLMDataCollator if spec.needs_images else SpeederDataCollator


def make_collator(spec: MethodSpec, model, tokenizer, data: BenchData, mode: str = "train"):
    return collator_class(spec)(
        tokenizer,
        model.config,
        item_titles=data.catalog.titles,
        item_texts=data.catalog.texts,
        mode=mode,
        prompt_style=spec.prompt_style,
        answer_mode=spec.answer_mode,
    )
