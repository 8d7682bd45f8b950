"""Content prior: how alike each candidate is to the user's history, in the frozen encoders' feature space.

In Amazon-style catalogs the next item often resembles one already bought (the same line, brand or kind), and the
features the model reads (e.g. a sentence encoder's text embedding) already say so: the cosine between a candidate
and the history's items ranks candidates with no training at all. Relearning that comparison through the LLM, from
a few thousand prompts, is slow; so, like the collaborative prior, it enters the candidate scores directly, with
fitted weights (`fusion_weights`), and the LLM adds what it misses. See docs/accuracy-recipe.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .item_features import ItemFeatureTable

AGGREGATES = ("max", "mean", "last")


def default_modalities(modalities: list[str]) -> list[str]:
    """The modalities a content prior compares by default: all but `id`, whose SASRec embeddings the collaborative
    prior already scores with."""
    return [m for m in modalities if m != "id"]


class ContentPrior(nn.Module):
    """`(B, C)` candidate scores `similarities @ weight`. Per modality in `modalities` (of the item table's
    `table_modalities`, in config order) there are three similarities: the candidate's highest, mean and most
    recent cosine to the history items' features.

    Histories come as left-padded SASRec-style tokens `(B, L)` (catalog row + 1, 0 pads), candidates as catalog
    rows `(B, C)` (-1 where a row has fewer); items without a modality's feature do not count for it. The weights
    start at zero, so a fresh prior changes no score.
    """

    def __init__(self, modalities: list[str], table_modalities: list[str]):
        super().__init__()
        self.modalities = list(modalities)
        self.columns = [list(table_modalities).index(m) for m in self.modalities]
        self.weight = nn.Parameter(torch.zeros(len(self.modalities) * len(AGGREGATES)))

    @property
    def feature_names(self) -> list[str]:
        """One name per weight, `<modality>.<aggregate>`."""
        return [f"{m}.{a}" for m in self.modalities for a in AGGREGATES]

    @torch.no_grad()
    def similarities(
        self, item_table: ItemFeatureTable, history_tokens: torch.LongTensor, candidate_ids: torch.LongTensor
    ) -> torch.Tensor:
        """The `(B, C, K)` similarities, K = 3 per modality (0 where a candidate or the history has no feature)."""
        history = history_tokens - 1  # (B, L) catalog rows, -1 pads
        batch, length = history.shape
        rows = torch.cat([history, candidate_ids], 1)  # (B, L + C)
        features, presence = item_table(rows.clamp(min=0).flatten())
        real = (rows >= 0)[..., None] & presence.view(batch, rows.shape[1], -1)  # (B, L + C, M)
        parts = []
        for column in self.columns:
            feature = nn.functional.normalize(features[column].float(), dim=-1).view(batch, rows.shape[1], -1)
            similarity = torch.einsum("bcd,bld->bcl", feature[:, length:], feature[:, :length])  # (B, C, L)
            counted = real[:, length:, None, column] & real[:, None, :length, column]  # (B, C, L)
            count = counted.sum(-1)  # (B, C)
            highest = similarity.masked_fill(~counted, -torch.inf).amax(-1).masked_fill(count == 0, 0.0)
            mean = (similarity * counted).sum(-1) / count.clamp(min=1)
            last = similarity[..., -1] * counted[..., -1]  # left padding: the last column is the latest item
            parts += [highest, mean, last]
        return torch.stack(parts, -1)

    def forward(
        self, item_table: ItemFeatureTable, history_tokens: torch.LongTensor, candidate_ids: torch.LongTensor
    ) -> torch.Tensor:
        similarities = self.similarities(item_table, history_tokens, candidate_ids)  # (B, C, K)
        return similarities.to(self.weight.dtype) @ self.weight


__all__ = ["AGGREGATES", "ContentPrior", "default_modalities"]
