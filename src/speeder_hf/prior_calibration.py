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


def fit_prior_weight(prior: CollaborativePrior, rows: Sequence[Mapping[str, Any]]) -> float:
    """[`CollaborativePrior.fit_weight`] of the prior alone on rows with `history`, `candidates` and `target` (as
    `CandidateSamplingDataset` gives them); returns the weight."""
    max_len = prior.sasrec.max_len
    device = prior.weight.device
    history = left_pad([list(row["history"])[-max_len:] for row in rows], device)  # (B, L)
    candidates = torch.tensor([list(row["candidates"]) for row in rows], device=device)  # (B, C)
    target = torch.tensor([list(row["candidates"]).index(row["target"]) for row in rows], device=device)  # (B,)
    return prior.fit_weight(history, candidates, target)


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
    collator = SpeederDataCollator(tokenizer, model.config, item_titles, item_texts, mode="eval")
    weight = prior.weight.detach().clone()
    parts: dict[str, list[torch.Tensor]] = {"history": [], "candidates": [], "target": [], "other": []}
    was_training = model.training
    model.eval()
    try:
        prior.weight.zero_()  # the model's scores without the prior
        for batch in DataLoader(list(rows), batch_size=batch_size, collate_fn=collator):
            meta = SpeederDataCollator.pop_metadata(batch)
            batch = {key: value.to(model.device) for key, value in batch.items()}
            parts["other"].append(model.score_candidates(num_candidates=meta["candidate_items"].shape[1], **batch))
            parts["history"].append(batch["prior_history"][:, -prior.sasrec.max_len :])
            parts["candidates"].append(batch["candidate_ids"])
            parts["target"].append(meta["target_index"].to(model.device))
    except BaseException:
        prior.weight.copy_(weight)
        raise
    finally:
        model.train(was_training)
    width = max(h.shape[1] for h in parts["history"])
    history = torch.cat([torch.nn.functional.pad(h, (width - h.shape[1], 0)) for h in parts["history"]])  # (N, L)
    return prior.fit_weight(
        history, torch.cat(parts["candidates"]), torch.cat(parts["target"]), other_scores=torch.cat(parts["other"])
    )


__all__ = ["calibrate_prior", "fit_prior_weight"]
