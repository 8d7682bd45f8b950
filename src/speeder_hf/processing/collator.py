"""`SpeederDataCollator`: rows `{user_id, history, target, candidates}` to padded model inputs, with labels on the
answer only, item slots in placeholder order, and histories truncated by whole items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from ..model.configuration_speeder import SpeederConfig
from ..model.modeling_sasrec import left_pad
from ..model.spae import check_tokenizer
from .prompts import PromptBuilder, RenderedPrompt

IGNORE_INDEX = -100
MODES = ("train", "eval")


def check_placeholders(prompt_ids: list[int], token: str, token_id: int, n_items: int, per_item: int) -> None:
    """Raises if the tokenizer split or merged a placeholder: the model fills exactly `n_items * per_item` slots."""
    expected = n_items * per_item
    found = prompt_ids.count(token_id)
    if found != expected:
        raise ValueError(
            f"The prompt tokenized into {found} {token} placeholders, expected {expected} ({n_items} items x "
            f"{per_item}); is {token!r} a special token of this tokenizer?"
        )


@dataclass
class EncodedRow:
    """One tokenized row before padding: ids, labels (-100 off the answer) and the rendered prompt it came from."""

    input_ids: list[int]
    labels: list[int]
    rendered: RenderedPrompt


@dataclass
class SpeederDataCollator:
    """Builds prompts (`speeder_hf.processing.prompts`), tokenizes, truncates and pads a list of rows.

    Each row needs `history` (catalog rows, oldest first), `candidates` (target included once) and `target`;
    `user_id` is optional (it only seeds the candidate shuffle).

    Output (B rows, S tokens, n item slots in the batch):
        - `input_ids`, `attention_mask`: `(B, S)`; right-padded for training, left-padded for evaluation.
        - `labels` (train mode): `(B, S)`, -100 except on the answer tokens (`" " + label`, or `" " + title`
          followed by eos in title mode). Eval prompts end where the answer would begin and have no labels.
        - `item_ids`, `item_recency`: `(n,)`, one catalog row per item slot in row-major placeholder order (each
          slot is `num_item_tokens` placeholders); absent when the prompts have no slots.
        - for a model with a collaborative or content prior (`config.uses_candidate_priors`): `prior_history`
          `(B, L)`, each row's last `L` history items (at most `config.prior_history_len`) as SASRec tokens
          (catalog row + 1),
          left-padded with 0, and `candidate_ids` `(B, C)`, the candidates' catalog rows in presented (label) order.
        - with `return_metadata`: `candidate_items` `(B, C)` in presented order, `target_index` `(B,)` and
          `history_len` `(B,)` (length of the row's history as given, before any truncation). The model must not
          receive these: take them out with `pop_metadata`.

    Args:
        tokenizer: the tokenizer saved with the model (checked against `config` here).
        config: the model's `SpeederConfig`.
        item_titles, item_texts: per catalog row, see `PromptBuilder`.
        mode: `"train"` (prompt + answer + labels) or `"eval"` (prompt only).
        max_length: token budget per row; the oldest history items are dropped until the row fits.
        padding_side: defaults to right for train, left for eval (generation needs left padding).
        return_metadata: defaults to True in eval mode.
        prompt_style, answer_mode, hybrid: override the config's prompt settings (see `PromptBuilder`).
        shuffle_seed: when set, each row's candidates are shuffled deterministically from this seed and the row.
        pad_to_multiple_of: pad S up to a multiple of this.

    A subclass renders with its own `builder_class` and extends `check_prompt` for the placeholders its prompts add
    (as `benchmarks.baselines.MLLMDataCollator` does).
    """

    tokenizer: PreTrainedTokenizerBase
    config: SpeederConfig
    item_titles: Sequence[str | None] | None = None
    item_texts: Sequence[str | None] | None = None
    mode: str = "train"
    max_length: int | None = None
    padding_side: str | None = None
    return_metadata: bool | None = None
    prompt_style: str | None = None
    answer_mode: str | None = None
    hybrid: bool = True
    shuffle_seed: int | None = None
    pad_to_multiple_of: int | None = None
    builder: PromptBuilder = field(init=False, repr=False)

    METADATA_KEYS: ClassVar[tuple[str, ...]] = ("candidate_items", "target_index", "history_len")
    builder_class: ClassVar[type[PromptBuilder]] = PromptBuilder

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.padding_side is None:
            self.padding_side = "right" if self.mode == "train" else "left"
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}.")
        if self.return_metadata is None:
            self.return_metadata = self.mode == "eval"
        check_tokenizer(self.tokenizer, self.config)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (from_llm uses eos).")
        self.builder = self.builder_class(
            self.config,
            self.item_titles,
            self.item_texts,
            prompt_style=self.prompt_style,
            answer_mode=self.answer_mode,
            hybrid=self.hybrid,
        )
        if self.builder.answer_mode == "title" and self.mode == "train" and self.tokenizer.eos_token_id is None:
            raise ValueError("Title answers end with eos, but the tokenizer has no eos token.")

    @classmethod
    def pop_metadata(cls, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Removes the metadata keys from `batch` (in place) and returns them."""
        return {key: batch.pop(key) for key in cls.METADATA_KEYS if key in batch}

    # ----- one row -----------------------------------------------------------------------------------------
    def check_prompt(self, prompt_ids: list[int], rendered: RenderedPrompt) -> None:
        """Raises if the tokenized prompt does not hold `num_item_tokens` item placeholders per slot."""
        check_placeholders(
            prompt_ids,
            self.config.item_token,
            self.config.item_token_id,
            len(rendered.slot_items),
            self.config.num_item_tokens,
        )

    def _tokenize(self, rendered: RenderedPrompt) -> EncodedRow:
        prompt_ids = self.tokenizer(rendered.prompt, add_special_tokens=True)["input_ids"]
        self.check_prompt(prompt_ids, rendered)
        if self.mode == "eval":
            return EncodedRow(prompt_ids, [IGNORE_INDEX] * len(prompt_ids), rendered)
        # Prompt and answer are tokenized apart so the labels cover exactly the answer tokens.
        answer_ids = self.tokenizer(rendered.answer, add_special_tokens=False)["input_ids"]
        if self.builder.answer_mode == "title":
            answer_ids = answer_ids + [self.tokenizer.eos_token_id]
        return EncodedRow(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids, rendered)

    def encode(self, row: dict[str, Any]) -> EncodedRow:
        """Renders and tokenizes one row, dropping the oldest history items until it fits `max_length`."""
        history, candidates, target = row["history"], row["candidates"], row["target"]
        seed = None
        if self.shuffle_seed is not None:
            seed = f"{self.shuffle_seed}|{row.get('user_id')}|{[int(i) for i in history]}|{int(target)}"
        encoded = self._tokenize(self.builder.render(history, candidates, target, seed))
        if self.max_length is None or len(encoded.input_ids) <= self.max_length:
            return encoded
        kept = encoded.rendered.history
        # Token count grows with the number of kept items, so binary-search the most that fit (at least one).
        low, high, best = 1, len(kept) - 1, None
        while low <= high:
            keep = (low + high) // 2
            trial = self._tokenize(self.builder.render(kept[-keep:], candidates, target, seed))
            if len(trial.input_ids) <= self.max_length:
                best, low = trial, keep + 1
            else:
                high = keep - 1
        if best is None:
            shortest = self._tokenize(self.builder.render(kept[-1:], candidates, target, seed))
            raise ValueError(
                f"Row of user {row.get('user_id')!r} does not fit max_length={self.max_length}: even its most "
                f"recent history item and {len(candidates)} candidates take {len(shortest.input_ids)} tokens."
            )
        return best

    # ----- batch -------------------------------------------------------------------------------------------
    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(row) for row in features]
        length = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        input_ids, attention_mask, labels = [], [], []
        for e in encoded:
            pad = length - len(e.input_ids)
            ids, mask, lab = e.input_ids, [1] * len(e.input_ids), e.labels
            if self.padding_side == "right":
                ids, mask, lab = ids + [pad_id] * pad, mask + [0] * pad, lab + [IGNORE_INDEX] * pad
            else:
                ids, mask, lab = [pad_id] * pad + ids, [0] * pad + mask, [IGNORE_INDEX] * pad + lab
            input_ids.append(ids)
            attention_mask.append(mask)
            labels.append(lab)

        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),  # (B, S)
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),  # (B, S)
        }
        if self.mode == "train":
            batch["labels"] = torch.tensor(labels, dtype=torch.long)  # (B, S)
        slot_items = [item for e in encoded for item in e.rendered.slot_items]
        if slot_items:
            # Row-major placeholder order: row 0's slots first, matching the model's masked_scatter.
            batch["item_ids"] = torch.tensor(slot_items, dtype=torch.long)  # (n,)
            batch["item_recency"] = torch.tensor(  # (n,)
                [r for e in encoded for r in e.rendered.slot_recency], dtype=torch.long
            )
        if self.config.uses_candidate_priors:
            batch.update(self._prior_inputs(features, encoded))
        if self.return_metadata:
            sizes = {len(e.rendered.candidates) for e in encoded}
            if len(sizes) > 1:
                raise ValueError(f"Rows of one batch must have the same number of candidates, got {sorted(sizes)}.")
            batch["candidate_items"] = torch.tensor([e.rendered.candidates for e in encoded], dtype=torch.long)
            batch["target_index"] = torch.tensor([e.rendered.target_index for e in encoded], dtype=torch.long)
            batch["history_len"] = torch.tensor([len(row["history"]) for row in features], dtype=torch.long)
        return batch

    def _prior_inputs(self, features: list[dict[str, Any]], encoded: list[EncodedRow]) -> dict[str, torch.Tensor]:
        max_len = self.config.prior_history_len
        tokens = left_pad([[int(i) for i in row["history"]][-max_len:] for row in features], "cpu")
        width = max(len(e.rendered.candidates) for e in encoded)
        candidates = torch.full((len(encoded), width), -1, dtype=torch.long)  # -1: the row shows fewer
        for i, e in enumerate(encoded):
            candidates[i, : len(e.rendered.candidates)] = torch.tensor(e.rendered.candidates)
        return {"prior_history": tokens, "candidate_ids": candidates}  # (B, L), (B, C)


__all__ = ["IGNORE_INDEX", "EncodedRow", "SpeederDataCollator", "check_placeholders"]
