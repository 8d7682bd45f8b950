"""Speeder: a causal LM that reads a user's history as one compressed soft token per item (MRC), with
absolute and relative position cues (SPAE), and picks the next item among labelled candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

from .candidate_pointer import CandidatePointer
from .collaborative_prior import CollaborativePrior
from .configuration_speeder import SpeederConfig
from .content_prior import ContentPrior
from .item_features import ItemFeatureTable, check_finite
from .mrc import MixtureOfModalityExperts
from .spae import SequentialPositionEncoding

logger = logging.get_logger(__name__)


@dataclass
class SpeederCausalLMOutput(CausalLMOutputWithPast):
    """The inner LM's output plus the MRC gate weights `(n_items, M)` and the gate's auxiliary loss."""

    gate_weights: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


class CandidateInputs(NamedTuple):
    """What the candidate scores beyond the LM head read: the pointer finds candidate slots in `input_ids` `(B, S)`
    by `item_recency` `(n,)`; the prior reads SASRec tokens `prior_history` `(B, L)` and `candidate_ids` `(B, C)`."""

    input_ids: torch.LongTensor | None
    item_recency: torch.LongTensor | None
    prior_history: torch.LongTensor | None
    candidate_ids: torch.LongTensor | None


class SpeederPreTrainedModel(PreTrainedModel):
    config_class = SpeederConfig
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _no_split_modules = []
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CandidatePointer):
            init.normal_(module.query, std=module.query.shape[1] ** -0.5)
            # A zero key: a fresh pointer adds nothing to the label logits.
            init.zeros_(module.key)
        if isinstance(module, CollaborativePrior):
            init.ones_(module.weight)  # start from SASRec's own scores
        if isinstance(module, ContentPrior):
            init.zeros_(module.weight)  # a fresh content prior changes no score until its weights are fitted


class SpeederForSequentialRec(SpeederPreTrainedModel, GenerationMixin):
    """Wraps any `AutoModelForCausalLM` as `language_model`, with the MRC projector (`mrc`), the SPAE
    embeddings (`spae`) and the catalog feature table (`item_table`).

    Placeholders `<item>` in `input_ids` are replaced, in row-major order, by the compressed tokens of the
    items given as catalog rows (`item_ids`) or as explicit per-slot features (`item_features`).

    In index mode, candidate label scores are the LM head's label logits, plus the `candidate_pointer` scores
    (`config.candidate_pointer`), plus the `collaborative_prior`'s weighted SASRec scores (once
    `set_collaborative_prior` gave it a SASRec), plus the `content_prior`'s weighted feature similarities to the
    history (once `set_content_prior` named its modalities); they enter the training loss (at labelled positions)
    and `score_candidates`. The priors read `prior_history` `(B, L)` and `candidate_ids` `(B, C)`, which
    `SpeederDataCollator` emits for such a model.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.mrc = MixtureOfModalityExperts(config)
        self.spae = SequentialPositionEncoding(config)
        self.item_table = ItemFeatureTable(config)
        self.candidate_pointer = CandidatePointer(config) if config.uses_candidate_pointer else None
        self.collaborative_prior = CollaborativePrior(config) if config.uses_collaborative_prior else None
        self.content_prior = (
            ContentPrior(config.content_prior, config.modalities) if config.uses_content_prior else None
        )
        self.active_modalities = list(config.modalities)
        self.post_init()

    # ----- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_llm(cls, llm, tokenizer, **config_kwargs) -> SpeederForSequentialRec:
        """Builds a Speeder model around a pretrained causal LM.

        Args:
            llm: an `AutoModelForCausalLM` instance, or a local path / Hub id to load one from.
            tokenizer: the LLM's tokenizer; Speeder's special tokens are added to it in place.
            **config_kwargs: fields of the class's config (`SpeederConfig`: modalities, modality_dims,
                max_history_len, ...).
        """
        from .spae import add_speeder_tokens

        if isinstance(llm, str):
            llm = AutoModelForCausalLM.from_pretrained(llm)
        config = cls.config_class(text_config=llm.config, **config_kwargs)
        add_speeder_tokens(tokenizer, config)
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = llm.get_input_embeddings().weight.detach()
        config.item_token_norm = float(embeddings.float().norm(dim=-1).mean())
        config.text_config = llm.config

        model = cls(config)
        model.language_model = llm
        model.to(dtype=llm.dtype)
        if model.spae.absolute is not None:
            # Start each position token where a random word would sit, at the LLM's embedding scale.
            with torch.no_grad():
                rows = torch.randint(0, embeddings.shape[0], (model.spae.absolute.num_embeddings,))
                model.spae.absolute.weight.copy_(embeddings[rows])
        return model

    @classmethod
    def from_catalog(
        cls,
        llm,
        tokenizer,
        catalog,
        modalities: list[str] | None = None,
        collaborative_prior: nn.Module | None = None,
        **config_kwargs,
    ) -> SpeederForSequentialRec:
        """[`from_llm`] for an item catalog: the config takes the catalog's modalities and their feature sizes,
        and the model holds the catalog's feature table (`set_item_features`) and, when given, `collaborative_prior`
        (`set_collaborative_prior`).

        Args:
            llm, tokenizer: as in `from_llm`.
            catalog: an [`speeder_hf.ItemCatalog`] (anything with `modalities`, `modality_dims(modalities)` and
                `feature_tensors(modalities)`).
            modalities: the catalog modalities the model reads; None reads them all.
            collaborative_prior: a trained SASRec over the catalog's rows.
            **config_kwargs: further config fields.

        Raises:
            KeyError: a requested modality has no features in the catalog.
        """
        modalities = list(catalog.modalities if modalities is None else modalities)
        features, presence = catalog.feature_tensors(modalities)  # before the LLM is touched: it checks modalities
        model = cls.from_llm(
            llm, tokenizer, modalities=modalities, modality_dims=catalog.modality_dims(modalities), **config_kwargs
        )
        model.set_item_features(features, presence)
        if collaborative_prior is not None:
            model.set_collaborative_prior(collaborative_prior)
        return model

    def set_collaborative_prior(self, sasrec: nn.Module) -> None:
        """Adds the collaborative prior, a frozen copy of a trained SASRec (`SASRecNetwork`, e.g.
        [`speeder_hf.SASRec`]) over the same catalog rows, with its weight at 1. On a model that has a prior already,
        the SASRec is replaced and the learned weight kept."""
        if self.config.answer_mode != "index":
            raise ValueError("The collaborative prior scores candidate labels; it needs answer_mode='index'.")
        if self.config.num_items and sasrec.num_items != self.config.num_items:
            raise ValueError(
                f"The SASRec covers {sasrec.num_items} items but the model's catalog has {self.config.num_items}; "
                "train the SASRec on the same catalog rows."
            )
        prior = CollaborativePrior.from_sasrec(sasrec, self.config)
        if self.collaborative_prior is not None:
            prior.weight.data.copy_(self.collaborative_prior.weight.detach())
        self.collaborative_prior = prior.to(device=self.device, dtype=self.mrc.norm.weight.dtype)

    def set_content_prior(self, modalities: list[str] | tuple[str, ...]) -> None:
        """Adds the content prior over `modalities` (features of the model's item table), its weights at zero:
        scores change only once they are fitted (`speeder_hf.training.prior_calibration.calibrate_priors`). An empty
        list removes it."""
        if self.config.answer_mode != "index":
            raise ValueError("The content prior scores candidate labels; it needs answer_mode='index'.")
        unknown = [m for m in modalities if m not in self.config.modalities]
        if unknown:
            raise ValueError(
                f"Unknown modalities {unknown} for the content prior; the model has {self.config.modalities}."
            )
        self.config.content_prior = list(modalities) or None
        prior = ContentPrior(modalities, self.config.modalities) if modalities else None
        self.content_prior = prior.to(device=self.device, dtype=self.mrc.norm.weight.dtype) if prior else None

    def set_item_features(self, features: dict[str, torch.Tensor], presence: torch.Tensor) -> None:
        """Installs a catalog's feature table (`features[m]`: `(N, d_m)`, `presence`: `(N, M)` bool)."""
        self.item_table.set(features, presence)
        self.config.num_items = self.item_table.num_items

    # ----- modality state (read in forward; MPO switches it per stage) --------------------------------------
    def set_active_modalities(self, modalities: list[str] | tuple[str, ...]) -> None:
        unknown = [m for m in modalities if m not in self.config.modalities]
        if unknown:
            raise ValueError(f"Unknown modalities {unknown}; the model has {self.config.modalities}.")
        self.active_modalities = list(modalities)

    def _active_mask(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([m in self.active_modalities for m in self.config.modalities], device=device)

    # ----- embedding accessors, forwarded to the inner LM ---------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        embeddings = self.language_model.resize_token_embeddings(*args, **kwargs)
        self.config.text_config = self.language_model.config
        return embeddings

    # ----- the splice ------------------------------------------------------------------------------------------
    def get_item_tokens(
        self,
        item_ids: torch.LongTensor | None = None,
        item_features: dict[str, torch.Tensor] | None = None,
        item_presence: torch.BoolTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compressed item tokens `(n, T, d)` and gate weights `(n, M)`, from catalog rows or explicit features."""
        if item_features is not None:
            features = []
            for name, dim in zip(self.config.modalities, self.config.modality_dims):
                value = item_features.get(name)
                if value is None:
                    n = next(iter(item_features.values())).shape[0]
                    value = torch.zeros(n, dim, device=self.device)
                if value.shape[-1] != dim:
                    raise ValueError(f"Features of modality {name!r} must have size {dim}, got {value.shape[-1]}.")
                check_finite(value, name)
                features.append(value.to(self.device, self.mrc.norm.weight.dtype))
            if item_presence is None:
                item_presence = torch.stack(
                    [
                        torch.full((features[0].shape[0],), m in item_features, device=self.device)
                        for m in self.config.modalities
                    ],
                    dim=-1,
                )
        elif item_ids is not None:
            features, presence = self.item_table(item_ids)
            features = [f.to(self.mrc.norm.weight.dtype) for f in features]
            item_presence = presence if item_presence is None else item_presence & presence
        else:
            raise ValueError("Pass item_ids (catalog rows) or item_features to fill the <item> placeholders.")
        mask = item_presence.to(self.device) & self._active_mask(self.device)
        return self.mrc(features, mask)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        item_ids: torch.LongTensor | None = None,
        item_features: dict[str, torch.Tensor] | None = None,
        item_presence: torch.BoolTensor | None = None,
        item_recency: torch.LongTensor | None = None,
        item_time_gaps: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with position tokens and `<item>` placeholders filled; returns `(B, S, d)` embeds
        and the gate weights (None when the prompt has no item)."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds = self.spae.embed_positions(input_ids, inputs_embeds)
        placeholder = input_ids == self.config.item_token_id  # (B, S)
        n_placeholders = int(placeholder.sum())
        if n_placeholders == 0 and item_ids is None and item_features is None:
            return inputs_embeds, None
        item_tokens, gate_weights = self.get_item_tokens(item_ids, item_features, item_presence)
        item_tokens = self.spae.add_recency(item_tokens, item_recency, item_time_gaps)  # (n, T, d)
        if n_placeholders != item_tokens.shape[0] * item_tokens.shape[1]:
            raise ValueError(
                f"Item tokens and {self.config.item_token} placeholders do not match: the prompts hold "
                f"{n_placeholders} placeholders but {item_tokens.shape[0]} items x {item_tokens.shape[1]} tokens "
                "were given. Truncate histories by whole items and pass one item per placeholder group, in order."
            )
        inputs_embeds = inputs_embeds.masked_scatter(
            placeholder.unsqueeze(-1).expand_as(inputs_embeds), item_tokens.to(inputs_embeds.dtype)
        )
        return inputs_embeds, gate_weights

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        item_ids: torch.LongTensor | None = None,
        item_features: dict[str, torch.Tensor] | None = None,
        item_presence: torch.BoolTensor | None = None,
        item_recency: torch.LongTensor | None = None,
        item_time_gaps: torch.LongTensor | None = None,
        prior_history: torch.LongTensor | None = None,
        candidate_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SpeederCausalLMOutput:
        gate_weights = None
        if inputs_embeds is None:
            inputs_embeds, gate_weights = self.embed_inputs(
                input_ids, item_ids, item_features, item_presence, item_recency, item_time_gaps
            )
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        labelled_only = self.config.labelled_logits_only or self._label_softmax or self._adds_candidate_scores
        if labels is not None and labelled_only and "logits_to_keep" not in kwargs:
            candidate_inputs = CandidateInputs(input_ids, item_recency, prior_history, candidate_ids)
            outputs, n_labelled = self._labelled_positions_loss(
                candidate_inputs, inputs_embeds, attention_mask, labels, num_items_in_batch, kwargs
            )
        else:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs
            )
            n_labelled = num_items_in_batch = None
        aux_loss = None
        if gate_weights is not None and self.config.mrc_aux_loss_weight > 0:
            aux_loss = self.mrc.load_balancing_loss(gate_weights, gate_weights > 0)
            if outputs.loss is not None:
                # Under gradient accumulation the LM loss is a share of the whole step; weigh the aux loss alike.
                share = n_labelled / num_items_in_batch if num_items_in_batch is not None and n_labelled else 1.0
                outputs.loss = outputs.loss + self.config.mrc_aux_loss_weight * aux_loss * share
        return SpeederCausalLMOutput(**outputs, gate_weights=gate_weights, aux_loss=aux_loss)

    def _labelled_positions_loss(
        self, candidate_inputs, inputs_embeds, attention_mask, labels, num_items_in_batch, kwargs
    ):
        """LM loss with logits built only at positions that predict a labelled token.

        Recommendation prompts label one answer (a label token or a title) after a long prompt, so projecting every
        position onto the vocabulary, as the inner LM would, is mostly wasted: for SmolLM2 the LM head costs as much
        as 8 of its 30 layers per position. Returned logits are `(B, K, V)` for the K kept positions (with the
        candidate pointer's and the collaborative prior's scores added on the label columns when the model has them).
        """
        shifted = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)  # (B, S): the token each position predicts
        keep = (shifted != -100).any(0).nonzero().flatten()  # (K,) positions any row needs
        outputs = self._run_language_model(inputs_embeds, attention_mask, keep, kwargs)
        targets = shifted[:, keep]  # (B, K)
        n_labelled = int((targets != -100).sum())
        if self._adds_candidate_scores:
            hidden = outputs.hidden_states[-1] if self.candidate_pointer is not None else None  # (B, S, d)
            answer_hidden = hidden[:, keep] if hidden is not None else None
            outputs.logits = self._add_candidate_scores(
                outputs.logits, answer_hidden, hidden, candidate_inputs, self.config.num_candidates
            )
            if hidden is not None and not kwargs.get("output_hidden_states"):  # asked for by the pointer only
                outputs = CausalLMOutputWithPast(**{k: v for k, v in outputs.items() if k != "hidden_states"})
        logits = outputs.logits
        if self._label_softmax:
            logits, targets = self._label_softmax_inputs(logits, targets)
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(n_labelled, 1)
        outputs.loss = loss / torch.as_tensor(denominator, device=loss.device)
        return outputs, n_labelled

    def _run_language_model(self, inputs_embeds, attention_mask, logits_to_keep, kwargs) -> CausalLMOutputWithPast:
        """The inner LM's forward; with the candidate pointer it also returns hidden states (the last is what the
        pointer reads)."""
        if self.candidate_pointer is not None:
            kwargs = {**kwargs, "output_hidden_states": True}
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
        )

    @property
    def _adds_candidate_scores(self) -> bool:
        return (
            self.candidate_pointer is not None or self.collaborative_prior is not None or self.content_prior is not None
        )

    def _add_candidate_scores(
        self,
        logits: torch.Tensor,
        answer_hidden: torch.Tensor | None,
        hidden_states: torch.Tensor | None,
        inputs: CandidateInputs,
        num_candidates: int,
    ) -> torch.Tensor:
        """Adds the pointer's `(B, K, C)` and the priors' `(B, C)` scores to the label columns of `logits`
        `(B, K, V)`, for the parts the model has; the LLM's part (label logits and pointer) weighs
        `config.llm_score_weight`."""
        label_ids = self._label_ids(num_candidates, logits.device)
        if not self.config.label_logits:
            logits = logits.index_fill(-1, label_ids, 0.0)  # the label tokens' LM-head logits do not count
        if self.candidate_pointer is not None:
            if inputs.input_ids is None:
                raise ValueError("The candidate pointer finds candidate slots in input_ids; pass input_ids.")
            positions, valid = self.candidate_pointer.candidate_positions(
                inputs.input_ids, inputs.item_recency, num_candidates
            )
            scores = self.candidate_pointer(answer_hidden, hidden_states, positions, valid)  # (B, K, C)
            logits = logits.index_add(-1, label_ids, scores.to(logits.dtype))
        if self.config.llm_score_weight != 1.0:
            llm = logits.index_select(-1, label_ids) * self.config.llm_score_weight  # (B, K, C)
            logits = logits.index_copy(-1, label_ids, llm)
        priors = self._prior_scores(inputs, num_candidates)  # (B, C') or None
        if priors is not None:
            priors = priors.unsqueeze(1).expand(-1, logits.shape[1], -1)  # (B, K, C')
            logits = logits.index_add(-1, label_ids[: priors.shape[-1]], priors.to(logits.dtype))
        return logits

    def _prior_scores(self, inputs: CandidateInputs, num_candidates: int) -> torch.Tensor | None:
        """The collaborative and content priors' summed `(B, C')` candidate scores; None without a prior."""
        if self.collaborative_prior is None and self.content_prior is None:
            return None
        if inputs.prior_history is None or inputs.candidate_ids is None:
            raise ValueError(
                "This model has a candidate prior: pass prior_history and candidate_ids, as SpeederDataCollator "
                "emits them for it."
            )
        if inputs.candidate_ids.shape[1] > num_candidates:
            raise ValueError(
                f"candidate_ids has {inputs.candidate_ids.shape[1]} columns, more than {num_candidates} labels."
            )
        scores = 0.0
        if self.collaborative_prior is not None:
            scores = self.collaborative_prior(inputs.prior_history, inputs.candidate_ids)  # (B, C')
        if self.content_prior is not None:
            scores = scores + self.content_prior(self.item_table, inputs.prior_history, inputs.candidate_ids)
        return scores

    def _label_ids(self, num_candidates: int, device: torch.device) -> torch.LongTensor:
        """`(C,)` token ids of the first `num_candidates` candidate labels."""
        return torch.tensor(self.config.label_token_ids[:num_candidates], device=device)

    @property
    def _label_softmax(self) -> bool:
        return self.config.answer_mode == "index" and self.config.answer_loss == "labels"

    def _label_softmax_inputs(
        self, logits: torch.Tensor, targets: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Logits `(B, K, V)` and token targets `(B, K)` -> logits over the label tokens `(B, K, C)` and targets as
        label indices (`answer_loss="labels"`)."""
        label_ids = self._label_ids(self.config.num_candidates, logits.device)
        matches = targets.unsqueeze(-1) == label_ids  # (B, K, C)
        labelled = targets != -100
        if (labelled & ~matches.any(-1)).any():
            raise ValueError(
                "answer_loss='labels' needs every labelled token to be a candidate label token "
                f"({self.config.label_tokens[: self.config.num_candidates]}); set config.answer_loss='vocab' to "
                "train on other answers."
            )
        indices = matches.int().argmax(-1).masked_fill(~labelled, -100)  # (B, K)
        return logits[..., label_ids], indices

    # ----- inference -------------------------------------------------------------------------------------------
    @property
    def never_generate_ids(self) -> list[int]:
        """The placeholder and position tokens, which the model must never emit."""
        return [self.config.item_token_id, *(self.config.position_token_ids or [])]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        item_ids: torch.LongTensor | None = None,
        item_features: dict[str, torch.Tensor] | None = None,
        item_presence: torch.BoolTensor | None = None,
        item_recency: torch.LongTensor | None = None,
        item_time_gaps: torch.LongTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generates from left-padded prompts; the splice runs once, on the prompt. Returns only the new tokens.

        With the candidate pointer or the collaborative prior (index answers), generated labels come from the LM head
        alone: take index answers from [`score_candidates`], which adds their scores.
        """
        if self._adds_candidate_scores:
            logger.warning_once(
                "generate() picks tokens with the LM head alone and ignores the candidate pointer and prior; take "
                "index answers from score_candidates() (as evaluate_ranking and the pipeline do)."
            )
        for key in ("token_type_ids", "prior_history", "candidate_ids"):  # the prior scores labels, not tokens
            generate_kwargs.pop(key, None)
        if attention_mask is not None and (attention_mask[:, -1] == 0).any():
            raise ValueError("generate needs left-padded prompts (tokenizer.padding_side = 'left').")
        inputs_embeds, _ = self.embed_inputs(
            input_ids, item_ids, item_features, item_presence, item_recency, item_time_gaps
        )
        suppress = set(generate_kwargs.pop("suppress_tokens", None) or []) | set(self.never_generate_ids)
        return self.language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            suppress_tokens=sorted(suppress),
            **generate_kwargs,
        )

    @torch.no_grad()
    def score_candidates(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        num_candidates: int | None = None,
        prior_history: torch.LongTensor | None = None,
        candidate_ids: torch.LongTensor | None = None,
        **item_kwargs,
    ) -> torch.Tensor:
        """Scores of each candidate label at the answer position, `(B, C)`, from one forward pass.

        The prompts must end where the answer label would follow (left or right padding both work). A row that shows
        fewer than `num_candidates` candidates gets meaningless scores in its extra columns.
        """
        num_candidates = num_candidates or self.config.num_candidates
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        answer = attention_mask.long().cumsum(-1).argmax(-1)  # (B,) last real token of each row, whatever the padding
        kept = answer.unique()  # sorted
        inputs_embeds, _ = self.embed_inputs(input_ids, **item_kwargs)
        # Logits only at the answer positions: the LM head over the whole prompt would cost more than many layers.
        outputs = self._run_language_model(inputs_embeds, attention_mask, kept, {"use_cache": False})
        logits = outputs.logits[rows, torch.searchsorted(kept, answer)].unsqueeze(1)  # (B, 1, V)
        if self._adds_candidate_scores:
            hidden = outputs.hidden_states[-1] if self.candidate_pointer is not None else None  # (B, S, d)
            answer_hidden = hidden[rows, answer].unsqueeze(1) if hidden is not None else None  # (B, 1, d)
            inputs = CandidateInputs(input_ids, item_kwargs.get("item_recency"), prior_history, candidate_ids)
            logits = self._add_candidate_scores(logits, answer_hidden, hidden, inputs, num_candidates)
        return logits[:, 0, self._label_ids(num_candidates, input_ids.device)].float()


__all__ = ["SpeederForSequentialRec", "SpeederPreTrainedModel", "SpeederCausalLMOutput"]
