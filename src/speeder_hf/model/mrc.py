"""MRC (Multimodal Representation Compression): a Mixture of Modality Experts that turns each item's
text, image and collaborative (ID) features into `num_item_tokens` soft tokens in the LLM's input space."""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_speeder import SpeederConfig


class ModalityExpert(nn.Module):
    """Projects one modality's feature `d_m -> num_item_tokens x d_llm` (Linear, GELU, Linear)."""

    def __init__(self, in_dim: int, hidden_size: int, out_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(in_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, out_dim * num_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (n, d_m) -> (n, T, d_llm)
        out = self.fc2(self.act(self.fc1(features)))
        return out.view(features.shape[0], self.num_tokens, -1)


class ModalityGate(nn.Module):
    """Scores modalities per item from the concatenated (masked) features."""

    def __init__(self, in_dim: int, hidden_size: int, num_modalities: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, num_modalities)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


class ItemCentering(nn.Module):
    """Subtracts the mean item token over the catalog, estimated on each training batch's items and kept as a
    running average for inference (BatchNorm's mean half).

    Without it the LayerNorm after the mixture keeps whatever component all items share, and training drifts into
    a degenerate start: before the LLM can use items, noise in their tokens only raises the loss, so the cheapest
    move is one shared token for every item (measured: mean pairwise cosine of trained item tokens 0.998 against
    0.23 at initialisation, and ranking at chance). With the shared part removed, the LayerNorm rescales whatever
    tells items apart to full norm, so that move no longer exists.
    """

    def __init__(self, dim: int, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (n, T, d)
        if self.training and tokens.shape[0] > 1:
            mean = tokens.mean(dim=(0, 1))  # (d,)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            return tokens - mean
        return tokens - self.running_mean.to(tokens.dtype)


class MixtureOfModalityExperts(nn.Module):
    """One expert per modality, a gate over the modalities an item has and the model currently uses, and a
    weighted sum centred over items (`ItemCentering`), normalised (LayerNorm) and rescaled to the LLM's typical
    token-embedding norm.

    Returns the item tokens `(n, T, d_llm)` and the gate weights `(n, M)` (0 for masked modalities).
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.modalities = list(config.modalities)
        hidden = config.text_config.hidden_size
        self.experts = nn.ModuleList(
            ModalityExpert(dim, config.mrc_hidden_size, hidden, config.num_item_tokens) for dim in config.modality_dims
        )
        self.gate = (
            ModalityGate(sum(config.modality_dims), config.gate_hidden_size, len(self.modalities))
            if config.mrc_gate
            else None
        )
        self.center = ItemCentering(hidden) if config.mrc_center_items else None
        self.norm = nn.LayerNorm(hidden)
        # LayerNorm output has norm ~sqrt(d); scale it to the norm of real token embeddings so item tokens
        # neither drown nor vanish next to the text around them.
        target_norm = config.item_token_norm if config.item_token_norm is not None else math.sqrt(hidden)
        self.scale = target_norm / math.sqrt(hidden)

    def forward(self, features: list[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: one `(n, d_m)` tensor per modality, in config order (rows of absent modalities are ignored).
            mask: `(n, M)` bool, True where the modality is present for the item and active in the model.
        """
        # Absent features are zeroed so garbage in a missing row cannot leak into the gate.
        features = [f * m.unsqueeze(-1).to(f.dtype) for f, m in zip(features, mask.unbind(-1))]
        if self.gate is not None:
            logits = self.gate(torch.cat(features, dim=-1)).float()
        else:
            logits = torch.zeros(mask.shape, device=mask.device)
        logits = logits.masked_fill(~mask, float("-inf"))
        # An item with no usable modality would give NaN; it gets all-zero weights instead.
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (n, M)

        expert_out = torch.stack([expert(f) for expert, f in zip(self.experts, features)], dim=1)  # (n, M, T, d)
        mixed = (weights.to(expert_out.dtype)[:, :, None, None] * expert_out).sum(dim=1)  # (n, T, d)
        if self.center is not None:
            mixed = self.center(mixed)
        return self.norm(mixed) * self.scale, weights

    @staticmethod
    def load_balancing_loss(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Squared mean routing share per modality, scaled so a uniform gate over M modalities scores 1."""
        usable = mask.any(dim=0)
        if weights.numel() == 0 or usable.sum() < 2:
            return weights.new_zeros(())
        share = weights[:, usable].mean(dim=0)
        return usable.sum() * (share**2).sum()


__all__ = ["ItemCentering", "MixtureOfModalityExperts", "ModalityExpert", "ModalityGate"]
