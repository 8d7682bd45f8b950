"""Collaborative prior: the SASRec that feeds the `id` modality also scores each candidate, and that score enters
Speeder's candidate label scores with a learned weight.

SASRec has already learned the collaborative signal from every training sequence; the LLM sees a few thousand
prompts. Relearning that signal through the LLM is slow and lossy, so the model starts from SASRec's ranking and the
LLM (label logits plus the candidate pointer) learns what SASRec misses: the total candidate score is
`prior_weight * sasrec(history) . e(candidate) + llm_score(candidate)`. The SASRec weights stay frozen (and in eval
mode, so its dropout never runs): with the LLM's scores at zero, the ranking is exactly SASRec's.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_speeder import SpeederConfig
from .modeling_sasrec import SASRecNetwork


class CollaborativePrior(nn.Module):
    """`(B, C)` candidate scores `weight * SASRec(history) . e(candidate)` from left-padded SASRec tokens
    `(B, L)` (catalog row + 1, 0 pads) and candidate catalog rows `(B, C)` (-1 where a row has no such candidate,
    scored 0).

    The weight is a plain parameter, not a child module, so the model's initialisation (which starts it at 1)
    reaches it; the SASRec weights come from [`SpeederForSequentialRec.set_collaborative_prior`] or the checkpoint.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.sasrec = SASRecNetwork(**config.collaborative_prior)
        self.weight = nn.Parameter(torch.ones(()))
        self.sasrec.requires_grad_(False)
        self.sasrec.eval()

    @classmethod
    def from_sasrec(cls, sasrec: nn.Module, config: SpeederConfig | None = None) -> CollaborativePrior:
        """A prior holding a copy of `sasrec`'s weights, weight 1; `config` (updated in place with `sasrec`'s
        settings) defaults to a fresh `SpeederConfig`."""
        config = config if config is not None else SpeederConfig()
        config.collaborative_prior = dict(sasrec.settings)
        prior = cls(config)
        prior.sasrec.load_state_dict(sasrec.state_dict())
        return prior

    def train(self, mode: bool = True) -> CollaborativePrior:
        super().train(mode)
        self.sasrec.eval()  # frozen: SASRec's dropout must not perturb the prior during Speeder's training
        return self

    @torch.no_grad()
    def sasrec_scores(self, history_tokens: torch.LongTensor, candidate_ids: torch.LongTensor) -> torch.Tensor:
        """SASRec's own `(B, C)` candidate scores (0 where `candidate_ids` is -1)."""
        if history_tokens.shape[1] > self.sasrec.max_len:
            history_tokens = history_tokens[:, -self.sasrec.max_len :]
        state = self.sasrec(history_tokens)[:, -1]  # (B, d)
        valid = candidate_ids >= 0  # (B, C)
        items = self.sasrec.item_embeddings()[candidate_ids.clamp(min=0)]  # (B, C, d)
        return torch.einsum("bd,bcd->bc", state, items) * valid

    def forward(self, history_tokens: torch.LongTensor, candidate_ids: torch.LongTensor) -> torch.Tensor:
        return self.weight * self.sasrec_scores(history_tokens, candidate_ids)


__all__ = ["CollaborativePrior"]
