"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): the collaborative model
whose item embeddings form the catalog's `id` modality (as in LLaRA, the static item-ID embedding, not a
contextual state), whose scores are Speeder's collaborative prior, and the classic baseline on the same
candidates. The network itself is `speeder_hf.model.modeling_sasrec`; this module trains, evaluates and loads it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from tqdm.auto import tqdm

from ..metrics import rank_metrics, target_ranks
from ..model.modeling_sasrec import SASRecNetwork, left_pad

logger = logging.getLogger(__name__)

LOSSES = ("ce", "sampled", "bce")


class SASRec(
    SASRecNetwork, PyTorchModelHubMixin, library_name="speeder_hf", tags=["sasrec", "sequential-recommendation"]
):
    """[`SASRecNetwork`] with Hub loading: `save_pretrained(dir)` / `SASRec.from_pretrained(dir)` (from
    `PyTorchModelHubMixin`) write and read `config.json` + `model.safetensors`."""


# ----- training ---------------------------------------------------------------------------------------------------
@dataclass
class SASRecTrainingResult:
    """The trained model (best validation weights when validation was given) and the per-evaluation log."""

    model: SASRec
    best_epoch: int
    log: list[dict[str, Any]] = field(default_factory=list)


def train_sasrec(
    train_sequences: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
    num_items: int,
    validation: datasets.Dataset | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 1,
    max_len: int = 50,
    dropout: float = 0.2,
    loss: str = "ce",
    num_negatives: int = 512,
    num_epochs: int = 200,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    eval_every: int = 5,
    patience: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SASRecTrainingResult:
    """Trains SASRec to predict every next item of the training sequences.

    Args:
        train_sequences: per user, the training part of the sequence (catalog rows, oldest first), e.g.
            `speeder_hf.data.training_sequences(rec)`; validation and test targets must not be in it.
        validation: rows with `history` and `target` (a split's `validation`); every `eval_every` epochs the
            full-ranking `NDCG@10` is measured, the best weights are kept, and training stops after
            `patience` evaluations without improvement.
        loss: `"ce"` (softmax over all items), `"sampled"` (softmax over the target and `num_negatives` uniform
            negatives shared by the batch: most of CE's accuracy at a fraction of its cost on a CPU) or `"bce"` (one
            uniform negative per position, as in the paper).
        num_negatives: negatives per batch of the `"sampled"` loss.
        max_len: history items read (the last `max_len + 1` items of a long sequence give the training pairs).

    Returns:
        `SASRecTrainingResult` with the model in eval mode.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    sequences = list(train_sequences.values()) if isinstance(train_sequences, Mapping) else list(train_sequences)
    sequences = [list(s[-(max_len + 1) :]) for s in sequences if len(s) >= 2]
    if not sequences:
        raise ValueError("No training sequence has two or more items; SASRec has nothing to learn from.")
    flat = np.concatenate([np.asarray(s) for s in sequences])
    if flat.min() < 0 or flat.max() >= num_items:
        raise ValueError(f"Training sequences hold item index {int(flat.max())}, outside the {num_items}-item catalog.")
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SASRec(num_items, hidden_size, num_layers, num_heads, max_len, dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=weight_decay)

    result = SASRecTrainingResult(model, best_epoch=num_epochs)
    best_score, best_state, stale = -1.0, None, 0
    epochs = tqdm(range(1, num_epochs + 1), desc="SASRec", disable=not progress)
    for epoch in epochs:
        model.train()
        total, count = 0.0, 0
        for batch in _batches(sequences, batch_size, rng):
            inputs = left_pad([s[:-1] for s in batch], device)  # (B, L)
            targets = left_pad([s[1:] for s in batch], device, shift=0)  # (B, L) catalog rows
            valid = inputs != 0  # (B, L)
            hidden = model(inputs)[valid]  # (P, d) over real positions
            positives = targets[valid]  # (P,)
            if loss == "ce":
                value = nn.functional.cross_entropy(model.score_all(hidden), positives)
            elif loss == "sampled":
                value = _sampled_softmax(model, hidden, positives, num_negatives, device)
            else:
                negatives = torch.randint(0, num_items, positives.shape, device=device)
                table = model.item_embeddings()
                pos_logit = (hidden * table[positives]).sum(-1)
                neg_logit = (hidden * table[negatives]).sum(-1)
                value = nn.functional.softplus(-pos_logit).mean() + nn.functional.softplus(neg_logit).mean()
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total, count = total + value.item() * len(positives), count + len(positives)
        entry: dict[str, Any] = {"epoch": epoch, "loss": total / count}
        if validation is not None and (epoch % eval_every == 0 or epoch == num_epochs):
            metrics = evaluate_sasrec(model, validation, candidates=False, ks=(10,), progress=False)
            entry.update({f"validation_{k}": v for k, v in metrics.items() if k.startswith("full_")})
            score = metrics["full_NDCG@10"]
            if score > best_score:
                best_score, best_state, stale, result.best_epoch = score, copy.deepcopy(model.state_dict()), 0, epoch
            else:
                stale += 1
            logger.info("SASRec epoch %d: %s", epoch, entry)
        result.log.append(entry)
        epochs.set_postfix(loss=f"{entry['loss']:.4f}", best=f"{best_score:.4f}")
        if best_state is not None and stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _sampled_softmax(
    model: SASRec, hidden: torch.Tensor, positives: torch.LongTensor, num_negatives: int, device: torch.device
) -> torch.Tensor:
    """Cross-entropy of each position's target against `num_negatives` uniform items shared by the batch; a
    negative that happens to be the position's target is masked out."""
    table = model.item_embeddings()
    negatives = torch.randint(0, model.num_items, (num_negatives,), device=device)  # (K,)
    pos_logit = (hidden * table[positives]).sum(-1, keepdim=True)  # (P, 1)
    neg_logit = hidden @ table[negatives].T  # (P, K)
    neg_logit = neg_logit.masked_fill(negatives[None, :] == positives[:, None], -torch.inf)
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # (P, 1 + K), the target in column 0
    return nn.functional.cross_entropy(logits, torch.zeros_like(positives))


def _batches(
    sequences: list[list[int]], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> Iterator[list[list[int]]]:
    """Shuffled batches of sequences of similar length: a batch pads to its longest sequence, and on Amazon data
    (median 6 items, a few over 100) random batches would be mostly padding. Sequences are shuffled, sorted by
    length within pools of `pool` batches, cut into batches, and the batches shuffled."""
    order = rng.permutation(len(sequences))
    span = batch_size * pool
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(sequences[i]))
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    for b in rng.permutation(len(batches)):
        yield [sequences[i] for i in batches[b]]


# ----- evaluation and export --------------------------------------------------------------------------------------
def evaluate_sasrec(
    model: SASRec,
    samples: datasets.Dataset,
    *,
    candidates: bool = True,
    full_ranking: bool = True,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 512,
    progress: bool = True,
) -> dict[str, float]:
    """Ranking metrics of SASRec on split rows (`history`, `target`, and `candidates` when `candidates`).

    - Candidate protocol: the target's rank among the row's candidates, keys `HR@K`, `NDCG@K`, `MRR` (the metric
      code Speeder is evaluated with, `speeder_hf.metrics`).
    - Full ranking: the target's rank among all items except those in the row's history, keys prefixed
      `full_`.
    """
    candidate_ranks, full_ranks = sasrec_ranks(
        model, samples, candidates=candidates, full_ranking=full_ranking, batch_size=batch_size, progress=progress
    )
    metrics = {"num_samples": len(samples)}
    if candidate_ranks is not None:
        metrics.update(rank_metrics(candidate_ranks, ks))
    if full_ranks is not None:
        metrics.update({f"full_{k}": v for k, v in rank_metrics(full_ranks, ks).items()})
    return metrics


@torch.no_grad()
def sasrec_ranks(
    model: SASRec,
    samples: datasets.Dataset,
    *,
    candidates: bool = True,
    full_ranking: bool = True,
    batch_size: int = 512,
    progress: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per row, the target's 0-based rank among the row's candidates and among all items but the history's (None
    for a protocol not asked for); see [`evaluate_sasrec`]."""
    model.eval()
    histories, targets = list(samples["history"][:]), list(samples["target"][:])
    rows = list(samples["candidates"][:]) if candidates else None
    candidate_ranks, full_ranks = [], []
    for start in tqdm(range(0, len(histories), batch_size), desc="SASRec eval", disable=not progress):
        history = histories[start : start + batch_size]
        target = torch.as_tensor(targets[start : start + batch_size])
        scores = model.score_all(model.last_hidden(history)).float().cpu()  # (B, N)
        if rows is not None:
            cands = torch.as_tensor(rows[start : start + batch_size])  # (B, C)
            hits = cands == target[:, None]  # (B, C)
            bad = (hits.sum(1) != 1) | (cands.sort(1).values.diff(1) == 0).any(1)
            if bad.any():
                row = start + int(bad.nonzero()[0])
                raise ValueError(f"Sample {row}: candidates must hold the target exactly once and no duplicates.")
            position = hits.int().argmax(1)  # (B,)
            candidate_ranks.append(target_ranks(scores.gather(1, cands), position))
        if full_ranking:
            for i, (h, t) in enumerate(zip(history, targets[start : start + batch_size])):
                scores[i, [j for j in h if j != t]] = -torch.inf
            full_ranks.append(target_ranks(scores, target))
    return (
        np.concatenate(candidate_ranks) if candidate_ranks else None,
        np.concatenate(full_ranks) if full_ranks else None,
    )


def sasrec_item_features(
    model: SASRec, train_sequences: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The `id` modality for `ItemCatalog.add_features("id", *sasrec_item_features(model, seqs))`: the `(N, d)`
    item embeddings, and `(N,)` presence that is False for items absent from the training sequences (their
    embeddings carry no collaborative signal)."""
    sequences = train_sequences.values() if isinstance(train_sequences, Mapping) else train_sequences
    present = np.zeros(model.num_items, dtype=bool)
    for seq in sequences:
        present[np.asarray(seq, dtype=np.int64)] = True
    return model.item_embeddings().detach().float().cpu().numpy(), present


__all__ = [
    "LOSSES",
    "SASRec",
    "SASRecTrainingResult",
    "evaluate_sasrec",
    "sasrec_item_features",
    "sasrec_ranks",
    "train_sasrec",
]
