"""SPAE (Sequential Position Awareness Enhancement): absolute position tokens `<|pos_i|>` written before each
history item, and a relative recency embedding added to each history item token, so that order survives
long histories. Also the tokenizer extension that adds the placeholder, position and label tokens."""

from __future__ import annotations

import torch
from torch import nn

from .configuration_speeder import SpeederConfig


class SequentialPositionEncoding(nn.Module):
    """Trained embeddings for SPAE.

    - `absolute[i]` is the input embedding of `<|pos_i|>` (i = 1..L). It lives here rather than in the LLM's
      vocabulary so it trains with the recommender while the LLM stays frozen or LoRA-tuned.
    - `relative[r]` is added to the token of the history item at distance r from the prediction point
      (r = 1 is the most recent item; 0 marks candidates and gets no embedding).
    - `time_gap[b]` (optional) is added for the bucketed time gap b before the prediction point (0 = unknown).
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        hidden, length = config.text_config.hidden_size, config.max_history_len
        self.absolute = nn.Embedding(length + 1, hidden) if config.spae_absolute else None
        self.relative = nn.Embedding(length + 1, hidden, padding_idx=0) if config.spae_relative else None
        self.time_gap = (
            nn.Embedding(config.num_time_buckets + 1, hidden, padding_idx=0) if config.num_time_buckets > 0 else None
        )
        # A plain list, not a buffer: non-persistent buffers come back uninitialised from meta-device loading.
        self.position_token_ids = list(config.position_token_ids or [])

    def embed_positions(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Replaces the embeddings of `<|pos_i|>` tokens by `absolute[i]`."""
        if self.absolute is None or not self.position_token_ids:
            return inputs_embeds
        position_token_ids = torch.tensor(self.position_token_ids, device=input_ids.device)
        # (B, S, L) one-hot of which position token sits where; L is small (<= a few hundred)
        hits = input_ids.unsqueeze(-1) == position_token_ids
        is_position = hits.any(-1)
        if not is_position.any():
            return inputs_embeds
        index = hits[is_position].float().argmax(-1) + 1  # (P,) 1-based position
        values = self.absolute(index).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(is_position.unsqueeze(-1).expand_as(inputs_embeds), values)

    def add_recency(
        self, item_tokens: torch.Tensor, recency: torch.Tensor | None, time_gaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Adds relative (and time-gap) embeddings to item tokens `(n, T, d)` given `recency` `(n,)`."""
        if self.relative is not None and recency is not None:
            item_tokens = item_tokens + self.relative(recency).unsqueeze(1).to(item_tokens.dtype)
        if self.time_gap is not None and time_gaps is not None:
            item_tokens = item_tokens + self.time_gap(time_gaps).unsqueeze(1).to(item_tokens.dtype)
        return item_tokens


def add_speeder_tokens(tokenizer, config: SpeederConfig) -> SpeederConfig:
    """Adds `<item>` and `<|pos_1|>`..`<|pos_L|>` to `tokenizer` as special tokens and records their ids, and
    the ids of the candidate labels, in `config`. Resize the model's embeddings to `len(tokenizer)` afterwards.

    Raises:
        ValueError: if a candidate label is not a single token for this tokenizer.
    """
    new_tokens = [config.item_token] + config.position_tokens
    tokenizer.add_special_tokens({"additional_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    config.item_token_id = tokenizer.convert_tokens_to_ids(config.item_token)
    config.position_token_ids = tokenizer.convert_tokens_to_ids(config.position_tokens)
    config.label_token_ids = [_single_token_id(tokenizer, label) for label in config.label_tokens]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return config


def _single_token_id(tokenizer, label: str) -> int:
    ids = tokenizer.encode(" " + label, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"Candidate label {label!r} is {len(ids)} tokens for this tokenizer ({ids}); labels must be single "
            "tokens. Pass label_tokens= with strings that are."
        )
    return ids[0]


def check_tokenizer(tokenizer, config: SpeederConfig) -> None:
    """Raises a clear error when the tokenizer's special-token ids disagree with those recorded in `config`
    (tokens added in another order, or onto a tokenizer that already had added tokens)."""
    if config.item_token_id is None:
        raise ValueError("The config has no item_token_id: build the model with SpeederForSequentialRec.from_llm.")
    expected = {config.item_token: config.item_token_id}
    expected.update(zip(config.position_tokens, config.position_token_ids or []))
    mismatched = {
        token: (tokenizer.convert_tokens_to_ids(token), token_id)
        for token, token_id in expected.items()
        if tokenizer.convert_tokens_to_ids(token) != token_id
    }
    for label, token_id in zip(config.label_tokens, config.label_token_ids or []):
        ids = tokenizer.encode(" " + label, add_special_tokens=False)
        if ids != [token_id]:
            mismatched[label] = (ids, token_id)
    if mismatched:
        details = ", ".join(
            f"{tok!r}: tokenizer {got} vs config {want}" for tok, (got, want) in list(mismatched.items())[:5]
        )
        raise ValueError(
            f"Tokenizer and config disagree on {len(mismatched)} Speeder token id(s) ({details}). Load the tokenizer "
            "saved with this model, not the base LLM's."
        )


__all__ = ["SequentialPositionEncoding", "add_speeder_tokens", "check_tokenizer"]
