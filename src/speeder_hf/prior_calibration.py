"""Fitting the collaborative prior's weight on rows that neither SASRec nor the LLM trained on.

The prior's weight sets how far the candidate scores trust SASRec against the LLM. The main job fits it on
validation users once the LLM is trained (against the LLM's scores); with the prior in training, it is also fitted
on the prior alone before training, so that training starts from SASRec's calibrated ranking. See
docs/accuracy-recipe.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .collaborative_prior import CollaborativePrior
from .collator import SpeederDataCollator
from .modeling_sasrec import left_pad


def prior_inputs(
    prior: CollaborativePrior, rows: Sequence[Mapping[str, Any]]
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """What the prior reads for rows with `history`, `candidates` and `target`, candidates in row order: SASRec
    tokens `(B, L)` of the last `max_len` history items, candidate rows `(B, C)` and the target's column `(B,)`."""
    device = prior.weight.device
    history = left_pad([list(row["history"])[-prior.sasrec.max_len :] for row in rows], device)  # (B, L)
    candidates = torch.tensor([list(row["candidates"]) for row in rows], device=device)  # (B, C)
    target = torch.tensor([list(row["candidates"]).index(row["target"]) for row in rows], device=device)  # (B,)
    return history, candidates, target


def fit_prior_weight(prior: CollaborativePrior, rows: Sequence[Mapping[str, Any]]) -> float:
    """[`CollaborativePrior.fit_weight`] of the prior alone on rows with `history`, `candidates` and `target` (as
    `CandidateSamplingDataset` gives them); returns the weight."""
    return prior.fit_weight(*prior_inputs(prior, rows))


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
def calibrate_prior(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> float:
    """Fits the prior's weight against the model's other candidate scores (LM head and pointer) on `rows`
    (`history`, `candidates`, `target`), through the same collator and `score_candidates` as evaluation; returns
    the weight, which is set on the model."""
    prior = model.collaborative_prior
    if prior is None:
        raise ValueError("The model has no collaborative prior to calibrate (set_collaborative_prior first).")
    rows = list(rows)
    weight = prior.weight.detach().clone()
    was_training = model.training
    model.eval()
    try:
        prior.weight.zero_()  # the model's scores without the prior
        other = candidate_scores(model, tokenizer, rows, item_titles, item_texts, batch_size)  # (N, C)
    except BaseException:
        prior.weight.copy_(weight)
        raise
    finally:
        model.train(was_training)
    return prior.fit_weight(*prior_inputs(prior, rows), other_scores=other)


__all__ = ["calibrate_prior", "candidate_scores", "fit_prior_weight", "prior_inputs"]
