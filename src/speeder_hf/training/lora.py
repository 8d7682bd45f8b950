"""LoRA on the wrapped language model only, with MRC and SPAE kept fully trainable and saved with the adapter."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from ..model.modeling_speeder import SpeederForSequentialRec

# Attention and MLP projections of Llama-style (q_proj ... down_proj) and GPT-2-style (c_attn, c_proj, c_fc)
# backbones. Anchored on `language_model.` so the MRC experts and gate (fc1/fc2) can never match.
DEFAULT_TARGET_MODULES = (
    r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)"
)
# Trained in full alongside LoRA; PEFT wraps each in a ModulesToSaveWrapper whose attribute lookup returns the
# trainable copy, so `self.mrc(...)` and method calls such as `self.spae.embed_positions(...)` both use it.
MODULES_TO_SAVE = ["mrc", "spae", "candidate_pointer", "collaborative_prior", "content_prior"]


def apply_lora(
    model: SpeederForSequentialRec,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
) -> PeftModel:
    """Wraps `model` with LoRA adapters on its language model (`task_type="CAUSAL_LM"`).

    MRC and SPAE become `modules_to_save`: trainable copies, saved inside `adapter_model.safetensors`. Everything
    else (the LLM's own weights, the item feature table) is frozen. The adapter reloads with
    `PeftModel.from_pretrained(base, adapter_dir)` onto a base that has the same resized vocabulary and catalog.

    Args:
        model: a plain [`SpeederForSequentialRec`] (already resized to its tokenizer).
        r, alpha, dropout: LoRA rank, scaling numerator (`lora_alpha`) and dropout.
        target_modules: a regex (full match on module names) or a list of names; defaults to the attention and
            MLP projections inside `language_model` for Llama- and GPT-2-style backbones.

    Raises:
        TypeError: if `model` is already a `PeftModel`.
        ValueError: (PEFT's `NoMatchingPeftModuleError`) if no module outside MRC/SPAE matches `target_modules`.
    """
    if isinstance(model, PeftModel):
        raise TypeError("apply_lora got a model that already has adapters; pass the plain SpeederForSequentialRec.")
    target_modules = target_modules if target_modules is not None else DEFAULT_TARGET_MODULES
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(MODULES_TO_SAVE),
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores weights transposed; PEFT needs to know (it would otherwise warn and flip it).
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.language_model.modules()),
    )
    return get_peft_model(model, config)


def merge_lora(model: PeftModel) -> SpeederForSequentialRec:
    """Folds the LoRA weights into the language model and returns the plain model, with the trained MRC and
    SPAE copies in place, ready for `save_pretrained` and a plain `AutoModel.from_pretrained`."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora expects a PeftModel (from apply_lora), got {type(model).__name__}.")
    return model.merge_and_unload()


__all__ = ["DEFAULT_TARGET_MODULES", "MODULES_TO_SAVE", "apply_lora", "merge_lora"]
