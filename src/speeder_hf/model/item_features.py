"""The catalog's per-modality feature table, held by the model as buffers so a saved model recommends from
item ids alone."""

from __future__ import annotations

import torch
from torch import nn

from .configuration_speeder import SpeederConfig


class ItemFeatureTable(nn.Module):
    """Frozen `(num_items, d_m)` feature matrix per modality plus a `(num_items, M)` presence mask.

    Rows are catalog indices 0..num_items-1 (the `ItemCatalog` maps external item ids to rows).
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.modalities = list(config.modalities)
        for name, dim in zip(config.modalities, config.modality_dims):
            self.register_buffer(f"features_{name}", torch.zeros(config.num_items, dim))
        self.register_buffer("presence", torch.zeros(config.num_items, len(self.modalities), dtype=torch.bool))

    @property
    def num_items(self) -> int:
        return self.presence.shape[0]

    def set(self, features: dict[str, torch.Tensor], presence: torch.Tensor) -> None:
        """Replaces the table. `features[m]` is `(N, d_m)`; `presence` is `(N, M)` bool in config order."""
        n = presence.shape[0]
        if presence.shape != (n, len(self.modalities)):
            raise ValueError(f"presence must be (num_items, {len(self.modalities)}), got {tuple(presence.shape)}.")
        for name in self.modalities:
            if name not in features:
                raise ValueError(f"Missing features for modality {name!r}; got {sorted(features)}.")
            value = torch.as_tensor(features[name], dtype=torch.float32)
            expected = getattr(self, f"features_{name}").shape[1]
            if value.shape != (n, expected):
                raise ValueError(f"Features of modality {name!r} must be ({n}, {expected}), got {tuple(value.shape)}.")
            check_finite(value, name)
            setattr(self, f"features_{name}", value.to(self.presence.device))
        self.presence = torch.as_tensor(presence, dtype=torch.bool).to(self.presence.device)

    def forward(self, item_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Looks up `(n,)` catalog rows; returns one `(n, d_m)` tensor per modality and the `(n, M)` mask."""
        if item_ids.numel() and (item_ids.min() < 0 or item_ids.max() >= self.num_items):
            bad = item_ids[(item_ids < 0) | (item_ids >= self.num_items)][0].item()
            raise KeyError(
                f"Unknown item id {bad}: the model's catalog has {self.num_items} items (rows 0..{self.num_items - 1})."
            )
        return [getattr(self, f"features_{m}")[item_ids] for m in self.modalities], self.presence[item_ids]


def check_finite(value: torch.Tensor, name: str) -> None:
    if not torch.isfinite(value).all():
        rows = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"Features of modality {name!r} contain NaN or inf (rows {rows}).")


__all__ = ["ItemFeatureTable", "check_finite"]
