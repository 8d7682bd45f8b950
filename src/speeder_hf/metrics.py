"""Recommendation metrics over a candidate set, plus LLaRA's title-answer parser.

Conventions:

- A *rank* is the 0-based position of the target among the candidates sorted by score (0 = top). Ties count
  against the target (`rank = #{candidates scoring >= the target} - 1`), so a model that scores every candidate
  alike gets rank C-1, not a free hit.
- Every metric is a mean over all samples given (valid or not), except LLaRA's `HR@1` (`llara_hr1`), which is over
  valid answers only.
- `NDCG@K` with one relevant item is `1 / log2(rank + 2)` when `rank < K`, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

ArrayLike = Sequence | np.ndarray | torch.Tensor

HISTORY_BUCKETS = ("1-5", "6-10", "11-20", ">20")

# The ranking metrics every table reports, in their order (the card's model-index, the benchmarks, the job).
RANKING_METRICS = ("VHR@1", "ValidRatio", "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


def _array(values: ArrayLike, dtype=None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _mean(values: np.ndarray) -> float:
    if values.size == 0:
        raise ValueError("No samples: metrics need at least one.")
    return float(values.mean())


def target_ranks(scores: ArrayLike, target_index: ArrayLike) -> np.ndarray:
    """0-based rank of each target given candidate scores `(N, C)` and target positions `(N,)`; ties count
    against the target.

    Raises:
        ValueError: on shape mismatch, a target position outside `0..C-1`, or NaN scores.
    """
    scores = _array(scores, np.float64)
    target_index = _array(target_index, np.int64)
    if scores.ndim != 2 or target_index.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and target_index (N,), got {scores.shape} and {target_index.shape}.")
    if target_index.size and (target_index.min() < 0 or target_index.max() >= scores.shape[1]):
        raise ValueError(f"target_index must lie in 0..{scores.shape[1] - 1}.")
    if np.isnan(scores).any():
        raise ValueError(f"Scores contain NaN (rows {np.flatnonzero(np.isnan(scores).any(1))[:5].tolist()}).")
    target_scores = scores[np.arange(scores.shape[0]), target_index][:, None]  # (N, 1)
    return (scores >= target_scores).sum(axis=1) - 1


def hit_ratio_at_k(ranks: ArrayLike, k: int) -> float:
    """HR@K: share of samples whose target ranks in the top K (`rank < k`)."""
    return _mean(_array(ranks) < k)


def ndcg_at_k(ranks: ArrayLike, k: int) -> float:
    """NDCG@K with a single relevant item: mean of `1 / log2(rank + 2)` over samples with `rank < k`, 0 otherwise."""
    ranks = _array(ranks, np.float64)
    return _mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0))


def mrr(ranks: ArrayLike) -> float:
    """Mean reciprocal rank, `mean(1 / (rank + 1))` (over the candidate set, no cut-off)."""
    return _mean(1.0 / (_array(ranks, np.float64) + 1.0))


def valid_ratio(valid: ArrayLike) -> float:
    """ValidRatio: valid answers / all samples."""
    return _mean(_array(valid, bool))


def valid_hit_ratio(valid: ArrayLike, correct: ArrayLike) -> float:
    """VHR@1 (the paper's headline metric): answers that are valid and equal the target / all samples."""
    return _mean(_array(valid, bool) & _array(correct, bool))


def llara_hr1(valid: ArrayLike, correct: ArrayLike) -> float:
    """LLaRA's HitRatio@1: correct / valid answers (0.0 when no answer is valid). VHR@1 = this x ValidRatio."""
    valid, correct = _array(valid, bool), _array(correct, bool)
    if valid.size == 0:
        raise ValueError("No samples: metrics need at least one.")
    num_valid = valid.sum()
    return float((valid & correct).sum() / num_valid) if num_valid else 0.0


def rank_metrics(ranks: ArrayLike, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """`HR@K` and `NDCG@K` for each K, and `MRR`, from target ranks."""
    ranks = _array(ranks)
    metrics = {}
    for k in ks:
        metrics[f"HR@{k}"] = hit_ratio_at_k(ranks, k)
        metrics[f"NDCG@{k}"] = ndcg_at_k(ranks, k)
    metrics["MRR"] = mrr(ranks)
    return metrics


def ranking_metrics(scores: ArrayLike, target_index: ArrayLike, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """`HR@K`, `NDCG@K` and `MRR` from candidate scores `(N, C)` and target positions `(N,)`."""
    return rank_metrics(target_ranks(scores, target_index), ks)


def mcnemar_test(first: ArrayLike, second: ArrayLike) -> dict[str, float | int]:
    """Exact McNemar test of two models' per-sample hits (booleans `(N,)`, the same samples in the same order).

    Returns `n`, both hit rates, their difference (`first - second`), the discordant counts (`first_only`,
    `second_only`) and the two-sided `p_value` of the binomial test on the discordant pairs (1.0 when none).
    """
    first, second = _array(first, bool), _array(second, bool)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"Paired hits must be two (N,) arrays of one shape, got {first.shape} and {second.shape}.")
    if first.size == 0:
        raise ValueError("No samples: a paired test needs at least one.")
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    discordant, low = only_first + only_second, min(only_first, only_second)
    # P(X <= low) for X ~ Binomial(discordant, 1/2), in log space so thousands of pairs do not underflow.
    log_terms = [
        math.lgamma(discordant + 1) - math.lgamma(k + 1) - math.lgamma(discordant - k + 1) - discordant * math.log(2)
        for k in range(low + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return {
        "n": int(first.size),
        "first": float(first.mean()),
        "second": float(second.mean()),
        "difference": float(first.mean() - second.mean()),
        "first_only": only_first,
        "second_only": only_second,
        "p_value": min(1.0, 2.0 * tail) if discordant else 1.0,
    }


def answer_metrics(valid: ArrayLike, correct: ArrayLike) -> dict[str, float]:
    """`VHR@1`, `ValidRatio` and LLaRA's `HR@1` (correct / valid) from per-sample answer flags."""
    return {
        "VHR@1": valid_hit_ratio(valid, correct),
        "ValidRatio": valid_ratio(valid),
        "HR@1": llara_hr1(valid, correct),
    }


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def parse_title_answer(generation: str, candidate_titles: Sequence[str]) -> int | None:
    """LLaRA's parser: which candidate a generated answer names, or None when the answer is invalid.

    The first line of the stripped generation is compared with each title, both lowercased with whitespace runs
    collapsed; a candidate is mentioned when its title is a substring of that line. The answer is valid only when
    exactly one candidate is mentioned, so naming two titles, or a title that contains another candidate's title
    (LLaRA's behaviour), is invalid. Empty titles never match.

    Returns:
        The index of the mentioned candidate in `candidate_titles`, or None.
    """
    stripped = generation.strip()
    line = _normalize(stripped.split("\n")[0] if stripped else "")
    mentioned = [i for i, title in enumerate(candidate_titles) if (norm := _normalize(title)) and norm in line]
    return mentioned[0] if len(mentioned) == 1 else None


def bucket_of(history_len: int) -> str:
    """History-length bucket: `"1-5"`, `"6-10"`, `"11-20"` or `">20"`."""
    if history_len < 1:
        raise ValueError(f"History length must be >= 1, got {history_len}.")
    if history_len <= 5:
        return "1-5"
    if history_len <= 10:
        return "6-10"
    if history_len <= 20:
        return "11-20"
    return ">20"


def bucket_indices(history_lens: ArrayLike) -> dict[str, np.ndarray]:
    """Sample indices per history-length bucket, non-empty buckets only, in `HISTORY_BUCKETS` order."""
    buckets = np.array([bucket_of(int(n)) for n in _array(history_lens)])
    return {name: np.flatnonzero(buckets == name) for name in HISTORY_BUCKETS if (buckets == name).any()}


__all__ = [
    "RANKING_METRICS",
    "HISTORY_BUCKETS",
    "answer_metrics",
    "bucket_indices",
    "bucket_of",
    "hit_ratio_at_k",
    "llara_hr1",
    "mcnemar_test",
    "mrr",
    "ndcg_at_k",
    "parse_title_answer",
    "rank_metrics",
    "ranking_metrics",
    "target_ranks",
    "valid_hit_ratio",
    "valid_ratio",
]
