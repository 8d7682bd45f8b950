"""Configuration of a Speeder sequential recommender (a causal LM plus MRC and SPAE)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import TRANSFORMERS_DYNAMIC_MODULE_NAME

DEFAULT_MODALITIES = ("text", "image", "id")
DEFAULT_MODALITY_DIMS = (384, 1280, 64)
PROMPT_STYLES = ("speeder", "llara", "text")
ANSWER_MODES = ("index", "title")
ANSWER_LOSSES = ("labels", "vocab")


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _pipelines_not_installed(custom_pipelines: dict[str, Any]) -> dict[str, Any]:
    """The entries of a saved config's `custom_pipelines` whose task no installed pipeline class is registered for
    in this process.

    transformers' `pipeline()` demands `trust_remote_code=True` for every task a config names there, even where the
    task's class is installed. Where `import speeder_hf` has registered its pipeline, that class serves the task
    instead, as the Auto classes prefer installed code to a checkpoint's `auto_map`; a class registered from remote
    code (a dynamic module) does not count, so each model directory still loads its own. The saved file keeps the
    entry (`speeder_hf.serving.bundle.add_remote_code` writes it there).
    """
    # The registry lives in `transformers.pipelines`; where that is not imported yet, no task is registered.
    registry = getattr(sys.modules.get("transformers.pipelines"), "PIPELINE_REGISTRY", None)
    registered = registry.supported_tasks if registry is not None else {}
    installed = {
        task
        for task, info in registered.items()
        if not getattr(info.get("impl"), "__module__", "").startswith(TRANSFORMERS_DYNAMIC_MODULE_NAME)
    }
    return {task: info for task, info in custom_pipelines.items() if task not in installed}


class SpeederConfig(PretrainedConfig):
    r"""Configuration of [`SpeederForSequentialRec`].

    Args:
        text_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the wrapped causal LM (any `AutoModelForCausalLM` architecture). Defaults to a Llama config.
        modalities (`Sequence[str]`):
            Ordered modality names. Kept as a list because configs serialise with sorted keys, and the MRC gate
            depends on the order.
        modality_dims (`Sequence[int]`):
            Feature size of each modality, in the order of `modalities`.
        num_items (`int`):
            Rows of the item feature table held by the model (the catalog size); 0 means no table, so item
            features must be passed explicitly.
        mrc_hidden_size (`int`):
            Hidden size of each modality expert (Linear -> GELU -> Linear).
        num_item_tokens (`int`):
            Soft tokens per item ("an item is worth one token" is 1).
        mrc_gate (`bool`):
            Learn a gate over modalities; when False the experts of the available modalities are averaged.
        gate_hidden_size (`int`):
            Hidden size of the gate MLP.
        mrc_center_items (`bool`):
            Subtract the mean item token over the catalog before the LayerNorm (running estimate, as in BatchNorm),
            so training cannot collapse every item onto one shared token (see `mrc.ItemCentering`).
        labelled_logits_only (`bool`):
            With labels, build logits (and the loss) only at positions that predict a labelled token; the answer
            is a few tokens after a long prompt, so this skips most of the LM head's work. Same loss either way.
        answer_loss (`str`):
            Training loss on index answers. `"labels"`: cross-entropy over the candidates' label tokens only, the
            very scores `score_candidates` ranks by, so no training goes into learning to emit a label at all;
            `"vocab"`: the plain LM loss over the whole vocabulary. Title answers always use the LM loss.
        candidate_pointer (`bool`):
            In index mode, add to each candidate label's logit a learned bilinear score between the answer
            position's final hidden state and the one at that candidate's item token (see `candidate_pointer`), so
            the label logits reach the items directly. Only for prompts that write candidate item slots (the
            `speeder` style, or `llara` with hybrid prompts); no effect in title mode.
        candidate_pointer_dim (`int`):
            Rank of the pointer's query and key projections.
        label_logits (`bool`):
            In index mode, count the LM head's logits of the label tokens in the candidate scores. False: the scores
            are the candidate pointer's and the collaborative prior's alone, so a fresh model (whose pointer adds
            zero) ranks exactly as its prior; a fresh LM head's label logits are noise that the first training steps
            would have to undo. Needs the pointer (`candidate_pointer`) or a prior.
        collaborative_prior (`dict`, *optional*):
            The constructor arguments of a SASRec network (`SASRecNetwork.settings`) whose candidate scores enter
            the candidate label scores with a learned weight (see `collaborative_prior`); set by
            `SpeederForSequentialRec.set_collaborative_prior`. Index answers only. None: no prior.
        content_prior (`list[str]`, *optional*):
            Modalities whose feature similarity between each candidate and the history items enters the candidate
            label scores with fitted weights (see `content_prior`); set by
            `SpeederForSequentialRec.set_content_prior`. Index answers only. None: no content prior.
        mrc_aux_loss_weight (`float`):
            Weight of the gate load-balancing loss added to the LM loss (0 turns it off).
        llm_score_weight (`float`):
            In index mode, the weight of the LLM's candidate scores (label logits and pointer) beside the priors';
            fitted with theirs after training (`prior_calibration.calibrate_priors`).
        retrieved_fusion (`dict`, *optional*):
            The weights (`llm`, then each prior feature's) that the pipeline scores with when a retriever proposed the
            candidates (fitted by `prior_calibration.calibrate_retrieved_fusion`; `fitted_on`: the rows it was fitted
            on). None: retrieved candidates are scored as any others.
        item_token_norm (`float`, *optional*):
            L2 norm that compressed item tokens are rescaled to, normally the mean norm of the LLM's token
            embeddings (set by `SpeederForSequentialRec.from_llm`).
        max_history_len (`int`):
            Most recent history items kept in a prompt, and the number of position tokens.
        spae_absolute (`bool`):
            Write `<|pos_i|>` before history item i, with trained embeddings.
        spae_relative (`bool`):
            Add a learned recency embedding (distance to the prediction point) to each history item token.
        num_time_buckets (`int`):
            When > 0, also add an embedding of the bucketed time gap to each history item token.
        prompt_style (`str`):
            One of `"speeder"`, `"llara"`, `"text"`.
        answer_mode (`str`):
            `"index"` (one label token per candidate, scored in one pass) or `"title"` (the title is generated).
        num_candidates (`int`):
            Candidates per sample, target included.
        item_token (`str`):
            Placeholder whose input embedding is replaced by an item's compressed token.
        position_token_template (`str`):
            Format string of the absolute position tokens.
        label_tokens (`Sequence[str]`, *optional*):
            Candidate labels; each `" " + label` must be a single token. Defaults to `A`, `B`, ...
        item_token_id, position_token_ids, label_token_ids:
            Token ids, recorded by `add_speeder_tokens` and checked against the tokenizer at load.
    """

    model_type = "speeder"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        modality_dims: Sequence[int] = DEFAULT_MODALITY_DIMS,
        num_items: int = 0,
        mrc_hidden_size: int = 1024,
        num_item_tokens: int = 1,
        mrc_gate: bool = True,
        gate_hidden_size: int = 128,
        mrc_center_items: bool = True,
        mrc_aux_loss_weight: float = 0.0,
        labelled_logits_only: bool = True,
        answer_loss: str = "labels",
        candidate_pointer: bool = True,
        candidate_pointer_dim: int = 256,
        label_logits: bool = True,
        collaborative_prior: dict[str, Any] | None = None,
        content_prior: Sequence[str] | None = None,
        llm_score_weight: float = 1.0,
        retrieved_fusion: dict[str, float] | None = None,
        item_token_norm: float | None = None,
        max_history_len: int = 20,
        spae_absolute: bool = True,
        spae_relative: bool = True,
        num_time_buckets: int = 0,
        prompt_style: str = "speeder",
        answer_mode: str = "index",
        num_candidates: int = 20,
        item_token: str = "<item>",
        position_token_template: str = "<|pos_{}|>",
        label_tokens: Sequence[str] | None = None,
        item_token_id: int | None = None,
        position_token_ids: Sequence[int] | None = None,
        label_token_ids: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = CONFIG_MAPPING[text_config.pop("model_type", "llama")](**text_config)
        elif text_config is None:
            text_config = CONFIG_MAPPING["llama"]()
        self.text_config = text_config

        modalities, modality_dims = list(modalities), [int(d) for d in modality_dims]
        if len(modalities) != len(modality_dims):
            raise ValueError(f"modalities {modalities} and modality_dims {modality_dims} differ in length.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be unique, got {modalities}.")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}.")
        if answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {answer_mode!r}.")
        if answer_loss not in ANSWER_LOSSES:
            raise ValueError(f"answer_loss must be one of {ANSWER_LOSSES}, got {answer_loss!r}.")
        if num_item_tokens < 1:
            raise ValueError(f"num_item_tokens must be >= 1, got {num_item_tokens}.")
        unknown = [m for m in content_prior or () if m not in modalities]
        if unknown:
            raise ValueError(f"content_prior names modalities {unknown} the model lacks; it has {modalities}.")
        label_tokens = list(label_tokens) if label_tokens is not None else _letters(num_candidates)
        if len(label_tokens) < num_candidates:
            raise ValueError(f"{num_candidates} candidates need as many label_tokens, got {len(label_tokens)}.")

        self.modalities = modalities
        self.modality_dims = modality_dims
        self.num_items = num_items
        self.mrc_hidden_size = mrc_hidden_size
        self.num_item_tokens = num_item_tokens
        self.mrc_gate = mrc_gate
        self.gate_hidden_size = gate_hidden_size
        self.mrc_center_items = mrc_center_items
        self.mrc_aux_loss_weight = mrc_aux_loss_weight
        self.labelled_logits_only = labelled_logits_only
        self.answer_loss = answer_loss
        self.candidate_pointer = candidate_pointer
        self.candidate_pointer_dim = candidate_pointer_dim
        self.label_logits = label_logits
        self.collaborative_prior = dict(collaborative_prior) if collaborative_prior is not None else None
        self.content_prior = list(content_prior) if content_prior else None
        self.llm_score_weight = float(llm_score_weight)
        self.retrieved_fusion = dict(retrieved_fusion) if retrieved_fusion is not None else None
        self.item_token_norm = item_token_norm
        self.max_history_len = max_history_len
        self.spae_absolute = spae_absolute
        self.spae_relative = spae_relative
        self.num_time_buckets = num_time_buckets
        self.prompt_style = prompt_style
        self.answer_mode = answer_mode
        self.num_candidates = num_candidates
        self.item_token = item_token
        self.position_token_template = position_token_template
        self.label_tokens = label_tokens
        self.item_token_id = item_token_id
        self.position_token_ids = list(position_token_ids) if position_token_ids is not None else None
        self.label_token_ids = list(label_token_ids) if label_token_ids is not None else None
        if kwargs.get("custom_pipelines"):
            kwargs["custom_pipelines"] = _pipelines_not_installed(kwargs["custom_pipelines"])
            if not kwargs["custom_pipelines"]:
                del kwargs["custom_pipelines"]
        # The inner LM owns the tie; the composite must say the same or 5.x treats it as untied on reload.
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def position_tokens(self) -> list[str]:
        """`<|pos_1|>` ... `<|pos_L|>`, L = `max_history_len`."""
        return [self.position_token_template.format(i) for i in range(1, self.max_history_len + 1)]

    @property
    def uses_candidate_pointer(self) -> bool:
        """Whether the model scores index answers with the candidate pointer (index mode, item-slot prompts)."""
        return self.candidate_pointer and self.answer_mode == "index" and self.prompt_style != "text"

    @property
    def uses_collaborative_prior(self) -> bool:
        """Whether candidate scores include the SASRec prior (a prior is set and answers are index labels)."""
        return self.collaborative_prior is not None and self.answer_mode == "index"

    @property
    def uses_content_prior(self) -> bool:
        """Whether candidate scores include the content prior (modalities are set and answers are index labels)."""
        return bool(self.content_prior) and self.answer_mode == "index"

    @property
    def uses_candidate_priors(self) -> bool:
        """Whether the model reads `prior_history` and `candidate_ids` (it has a collaborative or content prior)."""
        return self.uses_collaborative_prior or self.uses_content_prior

    @property
    def prior_history_len(self) -> int:
        """How many of the latest history items the priors read: SASRec's window where there is one."""
        return self.collaborative_prior["max_len"] if self.uses_collaborative_prior else self.max_history_len

    def modality_dim(self, modality: str) -> int:
        return self.modality_dims[self.modalities.index(modality)]


__all__ = ["SpeederConfig"]
