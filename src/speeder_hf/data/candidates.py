"""Candidate sets: the target plus uniform negatives the user never interacted with, shuffled. Validation and
test sets are drawn once and stored with the split; training sets are re-drawn every epoch."""

from __future__ import annotations

import zlib
from collections.abc import Collection
from typing import Any

import datasets
import numpy as np
import torch

from .rec_dataset import RecDataset


class CandidateSampler:
    """Draws `num_candidates - 1` distinct negatives uniformly from `range(num_items)` outside an exclusion set,
    adds the target once and shuffles.

    Args:
        num_items: catalog size.
        num_candidates: candidates per sample, target included.
    """

    def __init__(self, num_items: int, num_candidates: int = 20):
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}.")
        if num_items < num_candidates:
            raise ValueError(f"{num_candidates} candidates were requested but the catalog has only {num_items} items.")
        self.num_items = num_items
        self.num_candidates = num_candidates

    def sample(self, target: int, exclude: Collection[int], rng: np.random.Generator) -> list[int]:
        """Returns the shuffled candidate list; `exclude` (e.g. the user's items) never yields a negative."""
        if not 0 <= target < self.num_items:
            raise KeyError(f"Target item index {target} is outside the catalog (0..{self.num_items - 1}).")
        banned = set(exclude) | {target}
        needed = self.num_candidates - 1
        allowed = self.num_items - len(banned)
        if allowed < needed:
            raise ValueError(
                f"Only {allowed} items are outside the user's {len(banned)} interacted items; "
                f"{needed} negatives are needed for {self.num_candidates} candidates."
            )
        negatives: list[int] = []
        if allowed < 4 * needed:
            # Few items left: rejection sampling would loop many times, so draw from the explicit remainder.
            pool = np.setdiff1d(np.arange(self.num_items), np.fromiter(banned, dtype=np.int64))
            negatives = rng.choice(pool, size=needed, replace=False).tolist()
        else:
            # Keeping the first unseen draws is uniform sampling without replacement.
            while len(negatives) < needed:
                for item in rng.integers(0, self.num_items, size=2 * needed).tolist():
                    if item not in banned:
                        banned.add(item)
                        negatives.append(item)
                        if len(negatives) == needed:
                            break
        candidates = np.array([target, *negatives])
        return candidates[rng.permutation(self.num_candidates)].tolist()


def sample_rng(seed: int, stream: int, key: int | str) -> np.random.Generator:
    """A generator that depends only on `(seed, stream, key)`: a sample's candidates do not change when other
    samples are added, removed or visited in another order (dataloader workers, resumed runs)."""
    if isinstance(key, str):
        key = zlib.crc32(key.encode("utf-8"))
    return np.random.default_rng([seed, stream, key])


class CandidateSamplingDataset(torch.utils.data.Dataset):
    """Training samples with candidates drawn afresh each epoch.

    Wraps the `train` split of `make_split` (columns `user_id`, `history`, `target`, ...). Item `i` in epoch `e`
    gets candidates from `sample_rng(seed, e, i)`, so the draw is reproducible and independent of worker
    processes. `set_epoch` is called by `transformers.Trainer` (through accelerate's dataloader) at the start of
    each epoch; with persistent dataloader workers call it before the workers start.

    Args:
        samples: the training split.
        rec: the dataset the split came from (for each user's interacted items).
        num_candidates: candidates per sample, target included.
        seed: base seed.
    """

    def __init__(self, samples: datasets.Dataset, rec: RecDataset, num_candidates: int = 20, seed: int = 0):
        self.samples = samples
        self.sampler = CandidateSampler(rec.num_items, num_candidates)
        self.user_items = rec.user_items()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.samples[int(index)]
        if row["user_id"] not in self.user_items:
            raise KeyError(f"Sample {index}: user {row['user_id']!r} is not in the RecDataset given to this wrapper.")
        exclude = self.user_items[row["user_id"]]
        row["candidates"] = self.sampler.sample(row["target"], exclude, sample_rng(self.seed, self.epoch, index))
        return row


__all__ = ["CandidateSampler", "CandidateSamplingDataset", "sample_rng"]
