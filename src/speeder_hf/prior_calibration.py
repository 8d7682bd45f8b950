"""Fitting the priors' weights on rows that neither SASRec nor the LLM trained on.

The priors' weights set how far the candidate scores trust SASRec and the content similarities against the LLM.
The main job fits them on validation users once the LLM is trained (against the LLM's scores); with the
collaborative prior in training, its weight is also fitted on the prior alone before training, so that training
starts from SASRec's calibrated ranking. See docs/accuracy-recipe.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .collaborative_prior import CollaborativePrior
from .collator import SpeederDataCollator
from .content_prior import ContentPrior
from .fusion_weights import fit_fusion_weights
from .item_features import ItemFeatureTable
from .modeling_sasrec import left_pad

logger = logging.getLogger(__name__)

SASREC_WEIGHT = "sasrec"
LLM_WEIGHT = "llm"


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
    """The priors a model's candidate scores add to the LLM's, as one linear map: their per-candidate features
    `(B, C, K)` (SASRec's score, then the content similarities), their weights by name, and the fit of those
    weights. Either prior may be absent."""

    def __init__(
        self,
        collaborative: CollaborativePrior | None,
        content: ContentPrior | None,
        item_table: ItemFeatureTable | None = None,
        history_len: int | None = None,
    ):
        if collaborative is None and content is None:
            raise ValueError("There is no prior to fit: set a collaborative or content prior first.")
        if content is not None and item_table is None:
            raise ValueError("The content prior reads the item table: pass item_table.")
        if history_len is None and collaborative is None:
            raise ValueError("Without a SASRec, say how many history items the content prior reads (history_len).")
        self.collaborative, self.content, self.item_table = collaborative, content, item_table
        # how many of the latest history items the priors read, as the collator gives them
        self.history_len = history_len if history_len is not None else collaborative.sasrec.max_len

    @classmethod
    def of(cls, model) -> PriorFusion:
        """The priors of a `SpeederForSequentialRec`."""
        return cls(model.collaborative_prior, model.content_prior, model.item_table, model.config.prior_history_len)

    @property
    def names(self) -> list[str]:
        return ([SASREC_WEIGHT] if self.collaborative is not None else []) + (
            self.content.feature_names if self.content is not None else []
        )

    @property
    def weights(self) -> dict[str, float]:
        values = ([self.collaborative.weight.reshape(1)] if self.collaborative is not None else []) + (
            [self.content.weight] if self.content is not None else []
        )
        return dict(zip(self.names, torch.cat(values).tolist()))

    @torch.no_grad()
    def set_weights(self, weights: torch.Tensor) -> dict[str, float]:
        """Sets the `(K,)` weights in `names` order; returns them by name."""
        offset = 0
        if self.collaborative is not None:
            self.collaborative.weight.fill_(float(weights[0]))
            offset = 1
        if self.content is not None:
            self.content.weight.copy_(weights[offset:].to(self.content.weight))
        return self.weights

    @torch.no_grad()
    def features(self, history: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """`(B, C, K)` features of candidates `(B, C)` for histories `(B, L)` (SASRec tokens), in `names` order."""
        parts = []
        if self.collaborative is not None:
            parts.append(self.collaborative.sasrec_scores(history, candidates)[..., None].float())
        if self.content is not None:
            parts.append(self.content.similarities(self.item_table, history, candidates).float())
        return torch.cat(parts, -1)

    def fit(self, rows: Sequence[Mapping[str, Any]], other_scores: torch.Tensor | None = None) -> dict[str, float]:
        """Fits and sets the weights that minimise the candidate cross-entropy of `other_scores` `(N, C)` (the LLM's
        scores; none by default) plus the priors' on rows with `history`, `candidates` and `target`; returns them."""
        history, candidates, target = prior_inputs(rows, self.history_len, self.device)
        features = self.features(history, candidates).cpu()
        weights = fit_fusion_weights(features, target.cpu(), candidates.cpu() >= 0, other_scores)
        return self.set_weights(weights)

    @torch.no_grad()
    def rescore(
        self,
        scores: torch.Tensor,
        history: torch.LongTensor,
        candidates: torch.LongTensor,
        weights: Mapping[str, float],
    ) -> torch.Tensor:
        """The model's candidate scores `(B, C)` with the LLM's part and each prior feature reweighted by `weights`
        (`llm`, then `names`), as fitted by `calibrate_retrieved_fusion`."""
        features = self.features(history, candidates).to(scores.device)  # (B, C, K)
        current = torch.tensor(list(self.weights.values()), device=scores.device)
        llm = scores.float() - features @ current  # (B, C): the scores without the priors
        fitted = torch.tensor([weights[name] for name in self.names], device=scores.device)
        return weights[LLM_WEIGHT] * llm + features @ fitted

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
def calibrate_priors(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Fits the priors' weights against the model's other candidate scores (LM head and pointer) on `rows`
    (`history`, `candidates`, `target`), through the same collator and `score_candidates` as evaluation; the
    weights are set on the model and returned by name (`sasrec`, then `<modality>.<aggregate>`)."""
    if model.collaborative_prior is None and model.content_prior is None:
        raise ValueError("The model has no prior to calibrate (set_collaborative_prior or set_content_prior first).")
    fusion = PriorFusion.of(model)
    rows = list(rows)
    saved = torch.tensor(list(fusion.weights.values()))
    was_training = model.training
    model.eval()
    try:
        fusion.set_weights(torch.zeros_like(saved))  # the model's scores without the priors
        other = candidate_scores(model, tokenizer, rows, item_titles, item_texts, batch_size).cpu()  # (N, C)
    except BaseException:
        fusion.set_weights(saved)
        raise
    finally:
        model.train(was_training)
    return fusion.fit(rows, other_scores=other)


@torch.no_grad()
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
    """Fits how to weigh the LLM's scores and each prior feature when the candidates are a retriever's top `k`
    (the pipeline's two-stage mode), on `rows` (`history`, `target`) whose target the retriever found; the weights
    are stored as `model.config.retrieved_fusion` (`llm`, then the priors' names) and returned. Where the retriever
    found no row's target, nothing is fitted (a warning says so) and None is returned.

    Retrieved candidates are alike and all rank high for SASRec, so the weights fitted on uniformly drawn
    candidates do not carry over; with the LLM's weight fitted too, the fit can fall back to the retriever's own
    order where nothing else helps.

    Raises:
        ValueError: the model has no prior.
    """
    if model.collaborative_prior is None and model.content_prior is None:
        raise ValueError("The model has no prior to reweigh (set_collaborative_prior or set_content_prior first).")
    rows = list(rows)
    found = retriever.retrieve([list(row["history"]) for row in rows], k)
    hits = [
        {"history": list(row["history"]), "candidates": items, "target": row["target"]}
        for row, items in zip(rows, found)
        if row["target"] in items and len(items) == k
    ]
    if not hits:
        logger.warning(
            "The retriever's top %d holds no target of the %d rows: retrieved candidates keep the priors' weights.",
            k,
            len(rows),
        )
        return None
    fusion = PriorFusion.of(model)
    saved = torch.tensor(list(fusion.weights.values()))
    was_training = model.training
    model.eval()
    try:
        fusion.set_weights(torch.zeros_like(saved))  # the LLM's scores alone
        llm = candidate_scores(model, tokenizer, hits, item_titles, item_texts, batch_size).cpu()  # (N, K)
    finally:
        fusion.set_weights(saved)
        model.train(was_training)
    history, candidates, target = prior_inputs(hits, fusion.history_len, fusion.device)
    features = torch.cat([llm[..., None], fusion.features(history, candidates).cpu()], -1)  # (N, K, 1 + P)
    weights = fit_fusion_weights(features, target.cpu())
    fitted = dict(zip([LLM_WEIGHT, *fusion.names], weights.tolist()))
    model.config.retrieved_fusion = {**fitted, "fitted_on": len(hits)}
    return model.config.retrieved_fusion


__all__ = ["PriorFusion", "calibrate_priors", "calibrate_retrieved_fusion", "candidate_scores", "prior_inputs"]
