"""Candidate pointer: ties each candidate label's answer score to that candidate's own item token.

In index mode the LLM must learn to bind a label (` A`) to the soft item token written after it and to emit the
label of the item it prefers. That binding is an in-context lookup the LM head cannot express directly, and a
small LLM trained for a few hundred steps does not find it (the loss stays at ln C). The pointer adds, to each
label's logit at the answer position, a bilinear score between the answer position's final hidden state and the
final hidden state at the candidate's item token (which has read the whole history, causally). The answer is still
a label token scored in one forward pass; the pointer only gives the label logits a direct path to the items.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_speeder import SpeederConfig


class CandidatePointer(nn.Module):
    """Scores `(B, K, C)` = `q(answer_hidden) . k(candidate_hidden) / sqrt(r)`.

    The key starts at zero (`SpeederPreTrainedModel._init_weights`), so a fresh pointer adds nothing and the model
    starts from the LM head's label logits. The projections are plain parameters rather than `nn.Linear` children so
    that the model's initialisation reaches this module.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        hidden, rank = config.text_config.hidden_size, config.candidate_pointer_dim
        self.query = nn.Parameter(torch.empty(rank, hidden))
        self.key = nn.Parameter(torch.empty(rank, hidden))
        self.scale = 1.0 / math.sqrt(rank)
        self.item_token_id = config.item_token_id
        self.tokens_per_item = config.num_item_tokens

    def candidate_positions(
        self, input_ids: torch.LongTensor, item_recency: torch.LongTensor | None, num_candidates: int
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Sequence positions `(B, C)` of each candidate's last item token, in the order the candidates (and their
        labels) are written, and which of them exist `(B, C)` (a row may show fewer than `C` candidates).

        Candidate slots are the item slots with recency 0, as `SpeederDataCollator` writes them.
        """
        if item_recency is None:
            raise ValueError(
                "The candidate pointer finds candidate slots by item_recency == 0 (as SpeederDataCollator emits it); "
                "pass item_recency, or set config.candidate_pointer=False."
            )
        batch, tokens = input_ids.shape[0], self.tokens_per_item
        slots = (input_ids == self.item_token_id).nonzero()  # (n*T, 2) row-major (row, position)
        if slots.shape[0] != item_recency.shape[0] * tokens:
            raise ValueError(
                f"{item_recency.shape[0]} item recencies for {slots.shape[0]} placeholders ({tokens} per item)."
            )
        last_token = slots.view(-1, tokens, 2)[:, -1]  # (n, 2): each item's last placeholder
        candidates = last_token[item_recency.to(slots.device) == 0]  # (m, 2)
        rows, positions = candidates.unbind(-1)
        counts = torch.bincount(rows, minlength=batch)  # (B,)
        if bool((counts > num_candidates).any()):
            raise ValueError(
                f"A prompt writes {int(counts.max())} candidates, more than num_candidates={num_candidates}."
            )
        rank = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[rows]  # (m,) within row
        table = torch.zeros(batch, num_candidates, dtype=torch.long, device=rows.device)
        table[rows, rank] = positions
        valid = torch.arange(num_candidates, device=rows.device) < counts.unsqueeze(-1)
        return table, valid

    def forward(
        self,
        answer_hidden: torch.Tensor,
        hidden_states: torch.Tensor,
        candidate_positions: torch.LongTensor,
        valid: torch.BoolTensor,
    ) -> torch.Tensor:
        """`answer_hidden` `(B, K, d)`, `hidden_states` `(B, S, d)`, `candidate_positions` and `valid` `(B, C)` ->
        scores `(B, K, C)`, 0 where a row has no such candidate."""
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device).unsqueeze(-1)
        candidates = hidden_states[rows, candidate_positions]  # (B, C, d)
        query = nn.functional.linear(answer_hidden.to(self.query.dtype), self.query)  # (B, K, r)
        key = nn.functional.linear(candidates.to(self.key.dtype), self.key)  # (B, C, r)
        scores = torch.einsum("bkr,bcr->bkc", query, key) * self.scale
        return scores * valid.unsqueeze(1)


__all__ = ["CandidatePointer"]
