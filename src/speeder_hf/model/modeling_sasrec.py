"""The SASRec network (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), in plain torch so
that a Speeder model can carry it (as its collaborative prior) in remote code. Training, evaluation and Hub loading
live in `speeder_hf.catalog.sasrec`.

Inputs are catalog rows shifted by one (row `i` is token `i + 1`; 0 pads), left-padded. Positions count back from
the most recent item, so a batch may be padded to its own longest history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class SASRecNetwork(nn.Module):
    """Causal self-attention over item embeddings; the score of item `j` after a history is the dot product of the
    last hidden state with item `j`'s embedding (shared input/output embeddings).

    Args:
        num_items: catalog size N.
        hidden_size: embedding and hidden size (the `id` modality's dimension).
        num_layers, num_heads: transformer blocks and attention heads.
        max_len: most recent history items read.
        dropout: dropout on embeddings, attention and feed-forward.
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        max_len: int = 50,
        dropout: float = 0.2,
    ):
        super().__init__()
        # The constructor's arguments: a Speeder config records them to rebuild this network inside the model.
        self.settings = {
            "num_items": num_items,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "max_len": max_len,
            "dropout": dropout,
        }
        self.num_items, self.max_len, self.num_heads = num_items, max_len, num_heads
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, dim_feedforward=hidden_size, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden_size)
        nn.init.normal_(self.item_embedding.weight, std=hidden_size**-0.5)
        nn.init.normal_(self.position_embedding.weight, std=hidden_size**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Hidden states `(B, L, d)` of left-padded token sequences `(B, L)` (token = catalog row + 1, 0 = pad);
        position `t` sees positions `<= t` only."""
        batch, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"SASRec reads at most {self.max_len} items, got sequences of {length}.")
        positions = torch.arange(length - 1, -1, -1, device=tokens.device)  # 0 = most recent
        x = self.item_embedding(tokens) * math.sqrt(self.item_embedding.embedding_dim) + self.position_embedding(
            positions
        )
        x = self.dropout(x) * (tokens != 0).unsqueeze(-1)
        # True = may not attend. Real items see earlier real items; a pad sees only itself, so no softmax row is
        # empty (which would give NaN that then leaks through the values).
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)  # (L, L)
        pad_key = (tokens == 0).unsqueeze(1)  # (B, 1, L)
        eye = torch.eye(length, dtype=torch.bool, device=tokens.device)
        blocked = (causal | pad_key) & ~eye  # (B, L, L)
        blocked = blocked.repeat_interleave(self.num_heads, dim=0)  # (B * heads, L, L)
        return self.final_norm(self.encoder(x, mask=blocked))

    def item_embeddings(self) -> torch.Tensor:
        """`(N, d)` embeddings of catalog rows 0..N-1 (the padding row removed)."""
        return self.item_embedding.weight[1:]

    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores `(..., N)` of every catalog item from hidden states `(..., d)`."""
        return hidden @ self.item_embeddings().T

    @torch.no_grad()
    def last_hidden(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """`(B, d)` state after each history (catalog rows, oldest first; the last `max_len` items are read)."""
        device = self.item_embedding.weight.device
        return self(left_pad([h[-self.max_len :] for h in histories], device))[:, -1]


def left_pad(rows: Sequence[Sequence[int]], device: torch.device | str, shift: int = 1) -> torch.LongTensor:
    """`(B, L)` tokens `row + shift`, left-padded with 0 to the longest sequence."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("SASRec needs at least one history item per sequence (got an empty history).")
    length = max(len(r) for r in rows)
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, length - len(r) :] = torch.as_tensor(r, dtype=torch.long) + shift
    return out.to(device)


__all__ = ["SASRecNetwork", "left_pad"]
