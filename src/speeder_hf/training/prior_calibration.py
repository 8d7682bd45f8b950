"""Fitting the weights of the candidate scores' parts on rows that neither SASRec nor the LLM trained on.

A candidate's score is `w_llm * llm + w_sasrec * sasrec + sum_k w_k * similarity_k`. The weights set how far the
scores trust the LLM, SASRec and the content similarities. The main job fits them on validation users once the LLM is
trained, and fits a second set for the candidates a retriever proposes (the pipeline's two-stage mode); with the
collaborative prior in training, its weight is also fitted on the prior alone before training, so that training
starts from SASRec's calibrated ranking. See docs/accuracy-recipe.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..model.collaborative_prior import CollaborativePrior
from ..model.content_prior import ContentPrior
from ..model.item_features import ItemFeatureTable
from ..model.modeling_sasrec import left_pad
from ..processing.collator import SpeederDataCollator
from .fusion_weights import fit_fusion_weights

logger = logging.getLogger(__name__)

LLM_WEIGHT = "llm"
SASREC_WEIGHT = "sasrec"


def prior_inputs(
    rows: Sequence[Mapping[str, Any]], max_len: int, device: torch.device | str = "cpu"
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """What the priors read for rows with `history`, `candidates` and `target`, candidates in row order: SASRec
    tokens `(B, L)` of the last `max_len` history items, candidate rows `(B, C)` and the target's column `(B,)`."""
    history = left_pad([list(row["history"])[-max_len:] for row in rows], device)  # (B, L)
    candidates = torch.tensor([list(row["candidates"]) for row in rows], device=device)  # (B, C)
    target = torch.tensor([list(row["candidates"]).index(row["target"]) for row in rows], device=device)  # (B,)
    return history, candidates, target


class PriorFusion:
    """The parts of a model's candidate scores as one linear map: the LLM's weight (`config.llm_score_weight`,
    when a model config is given), the priors' per-candidate features `(B, C, P)` (SASRec's score, then the content
    similarities), all weights by name, and their fit. Either prior may be absent."""

    def __init__(
        self,
        collaborative: CollaborativePrior | None,
        content: ContentPrior | None,
        item_table: ItemFeatureTable | None = None,
        history_len: int | None = None,
        config=None,
    ):
        if collaborative is None and content is None:
            raise ValueError("There is no prior to fit: set a collaborative or content prior first.")
        if content is not None and item_table is None:
            raise ValueError("The content prior reads the item table: pass item_table.")
        if history_len is None and collaborative is None:
            raise ValueError("Without a SASRec, say how many history items the content prior reads (history_len).")
        self.collaborative, self.content, self.item_table, self.config = collaborative, content, item_table, config
        # how many of the latest history items the priors read, as the collator gives them
        self.history_len = history_len if history_len is not None else collaborative.sasrec.max_len

    @classmethod
    def of(cls, model) -> PriorFusion:
        """The LLM weight and the priors of a `SpeederForSequentialRec`."""
        config = model.config
        return cls(model.collaborative_prior, model.content_prior, model.item_table, config.prior_history_len, config)

    @property
    def prior_names(self) -> list[str]:
        return ([SASREC_WEIGHT] if self.collaborative is not None else []) + (
            self.content.feature_names if self.content is not None else []
        )

    @property
    def names(self) -> list[str]:
        return ([LLM_WEIGHT] if self.config is not None else []) + self.prior_names

    @property
    def weights(self) -> dict[str, float]:
        values = [torch.tensor([self.config.llm_score_weight])] if self.config is not None else []
        values += [self.collaborative.weight.detach().reshape(1).cpu()] if self.collaborative is not None else []
        values += [self.content.weight.detach().cpu()] if self.content is not None else []
        return dict(zip(self.names, torch.cat([v.float() for v in values]).tolist()))

    @torch.no_grad()
    def set_weights(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Sets the weights named in `weights` (any of `names`; the others stay); returns all of them by name."""
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"Unknown score weights {sorted(unknown)}; this model has {self.names}.")
        if LLM_WEIGHT in weights:
            self.config.llm_score_weight = float(weights[LLM_WEIGHT])
        if SASREC_WEIGHT in weights:
            self.collaborative.weight.fill_(float(weights[SASREC_WEIGHT]))
        if self.content is not None:
            for index, name in enumerate(self.content.feature_names):
                if name in weights:
                    self.content.weight[index] = float(weights[name])
        return self.weights

    @contextmanager
    def weights_applied(self, weights: Mapping[str, float]) -> Iterator[None]:
        """Scores with `weights` (by name) inside the block, and with the weights from before it afterwards."""
        saved = self.weights
        self.set_weights(weights)
        try:
            yield
        finally:
            self.set_weights(saved)

    @torch.no_grad()
    def features(self, history: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """`(B, C, P)` prior features of candidates `(B, C)` for histories `(B, L)` (SASRec tokens), in
        `prior_names` order."""
        parts = []
        if self.collaborative is not None:
            parts.append(self.collaborative.sasrec_scores(history, candidates)[..., None].float())
        if self.content is not None:
            parts.append(self.content.similarities(self.item_table, history, candidates).float())
        return torch.cat(parts, -1)

    def fit(self, rows: Sequence[Mapping[str, Any]], llm_scores: torch.Tensor | None = None) -> dict[str, float]:
        """The weights that minimise the candidate cross-entropy on rows with `history`, `candidates` and `target`:
        of the LLM's scores `llm_scores` `(N, C)` (taken at weight 1) and the priors' features, or, without LLM
        scores, of the priors alone. Returns them by name; sets nothing."""
        history, candidates, target = prior_inputs(rows, self.history_len, self.device)
        features = self.features(history, candidates).cpu()  # (N, C, P)
        names = self.prior_names
        if llm_scores is not None:
            features = torch.cat([llm_scores.float().cpu()[..., None], features], -1)  # (N, C, 1 + P)
            names = [LLM_WEIGHT, *names]
        weights = fit_fusion_weights(features, target.cpu(), candidates.cpu() >= 0)
        return dict(zip(names, weights.tolist()))

    @property
    def device(self) -> torch.device:
        prior = self.collaborative if self.collaborative is not None else self.content
        return prior.weight.device


@torch.no_grad()
def candidate_scores(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """The model's `score_candidates` scores `(N, C)` of rows with `history`, `candidates` and `target`, through the
    evaluation collator; columns follow each row's candidates as given."""
    collator = SpeederDataCollator(tokenizer, model.config, item_titles, item_texts, mode="eval")
    parts = []
    for batch in DataLoader(list(rows), batch_size=batch_size, collate_fn=collator):
        width = SpeederDataCollator.pop_metadata(batch)["candidate_items"].shape[1]
        batch = {key: value.to(model.device) for key, value in batch.items()}
        parts.append(model.score_candidates(num_candidates=width, **batch).float())
    return torch.cat(parts)


@torch.no_grad()
def llm_scores(model, tokenizer, rows: Sequence[Mapping[str, Any]], **collator_kwargs: Any) -> torch.Tensor:
    """The model's candidate scores `(N, C)` without the priors and with the LLM at weight 1 (the LM head's label
    logits and the pointer), as evaluation computes them; `collator_kwargs`: `item_titles`, `item_texts`,
    `batch_size` of [`candidate_scores`]."""
    fusion = PriorFusion.of(model)
    was_training = model.training
    model.eval()
    try:
        with fusion.weights_applied({name: float(name == LLM_WEIGHT) for name in fusion.names}):
            return candidate_scores(model, tokenizer, list(rows), **collator_kwargs).cpu()
    finally:
        model.train(was_training)


def _require_prior(model) -> None:
    if model.collaborative_prior is None and model.content_prior is None:
        raise ValueError("The model has no prior to calibrate (set_collaborative_prior or set_content_prior first).")


def calibrate_priors(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Fits the LLM's and the priors' weights on `rows` (`history`, `candidates`, `target`), through the same
    collator and `score_candidates` as evaluation; the weights are set on the model and returned by name (`llm`,
    `sasrec`, then `<modality>.<aggregate>`)."""
    _require_prior(model)
    rows = list(rows)
    scores = llm_scores(model, tokenizer, rows, item_titles=item_titles, item_texts=item_texts, batch_size=batch_size)
    fusion = PriorFusion.of(model)
    return fusion.set_weights(fusion.fit(rows, scores))


def calibrate_retrieved_fusion(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    retriever,
    k: int,
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, float] | None:
    """Fits the LLM's and the priors' weights for candidates that are a retriever's top `k` (the pipeline's
    two-stage mode), on `rows` (`history`, `target`) whose target the retriever found; they are stored as
    `model.config.retrieved_fusion` (by name, plus `fitted_on`: the rows fitted on) and returned. Where the
    retriever found no row's target, nothing is fitted (a warning says so) and None is returned.

    Retrieved candidates are alike and all rank high for SASRec, so the weights fitted on uniformly drawn
    candidates do not carry over; with the LLM's weight fitted too, the fit can fall back to the retriever's own
    order where nothing else helps.

    Raises:
        ValueError: the model has no prior.
    """
    _require_prior(model)
    rows = list(rows)
    found = retriever.retrieve([list(row["history"]) for row in rows], k)
    hits = [
        {"history": list(row["history"]), "candidates": items, "target": row["target"]}
        for row, items in zip(rows, found)
        if row["target"] in items and len(items) == k
    ]
    if not hits:
        logger.warning(
            "The retriever's top %d holds no target of the %d rows: retrieved candidates keep the usual weights.",
            k,
            len(rows),
        )
        return None
    scores = llm_scores(model, tokenizer, hits, item_titles=item_titles, item_texts=item_texts, batch_size=batch_size)
    model.config.retrieved_fusion = {**PriorFusion.of(model).fit(hits, scores), "fitted_on": len(hits)}
    return model.config.retrieved_fusion


__all__ = [
    "PriorFusion",
    "calibrate_priors",
    "calibrate_retrieved_fusion",
    "candidate_scores",
    "llm_scores",
    "prior_inputs",
]
