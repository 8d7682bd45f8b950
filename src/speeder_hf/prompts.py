"""Prompt building for the prompt styles (docs/design.md, "Prompts"), in one place and deterministic given the
sample.

A sample is a user's history (internal item indices, oldest first), the candidates in the order they are shown,
and the target. `PromptBuilder.render` turns it into the prompt text (ending right where the answer starts), the
answer text, and the catalog rows of the `<item>` slots with their recency, in placeholder order.

Styles (each history item / candidate as written; `<item>` stands for `num_item_tokens` placeholders):

- `speeder`: history `<|pos_1|><item><|pos_2|><item>...` (no titles; `<item>,<item>,...` when
  `spae_absolute=False`); candidates ` A<item> B<item> ...` in index mode, so the label token in the prompt is the
  very token of the answer, and `<item>,<item>,...` in title mode. No separators around the special tokens: they
  delimit themselves, and every separator costs a token per item.
- `llara` (LLaRA's hybrid prompt): history and candidates `{title} <item>`, comma-separated; with `hybrid=False`
  only `{title}` (LLaRA's text-only curriculum prompt, no slots).
- `text` (TALLRec-like): history items as their full text, one per line; candidates as titles; no slots.
- `mllm` (uncompressed multimodal baseline, LLaVA-like): LLaRA's template with each item written as
  `{title} <image>...<image><item>`: `num_image_tokens` image placeholders (one per cell of the image encoder's
  spatial feature map) and the ID slot. It needs `config.image_token` and `config.num_image_tokens`, which
  `speeder_hf.baselines.MLLMForSequentialRec.from_llm` records; every item gets its image placeholders (an item
  without an image is filled from an all-zero feature map by the model).

In `index` answer mode candidates are labelled in every style (`(A) {title}` in the titled styles) and the answer is
`" " + label`, one token; in `title` answer mode the answer is `" " + title` of the target. Position tokens are
written only by the `speeder` style.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .configuration_speeder import ANSWER_MODES, PROMPT_STYLES, SpeederConfig

# Styles a builder renders: the config's styles plus the `mllm` baseline, which only the benchmarks' model class
# (`speeder_hf.baselines.MLLMForSequentialRec`) reads, so it is chosen per builder rather than in the config.
BUILDER_STYLES = (*PROMPT_STYLES, "mllm")

_LLARA_TEMPLATE = (
    "This user has interacted with {history} in the previous. Please predict the next item this user will "
    "interact with. Choose the answer from the following {num_candidates} candidates: {candidates}. Answer:"
)
_TEMPLATES = {
    "speeder": (
        "A user interacted with these items, oldest first:{history}.\n"
        "Which item will the user interact with next? Candidates:{candidates}.\nAnswer:"
    ),
    "llara": _LLARA_TEMPLATE,
    "text": (
        "A user interacted with these items, oldest first:\n{history}\n"
        "Which item will the user interact with next? Candidates: {candidates}.\nAnswer:"
    ),
    # Same instruction as LLaRA's, so the two baselines differ only in how an item is written.
    "mllm": _LLARA_TEMPLATE,
}


@dataclass(frozen=True)
class RenderedPrompt:
    """One rendered sample.

    Attributes:
        prompt: the prompt text; it ends where the answer begins (index mode: right before the label token).
        answer: `" " + label` (index mode) or `" " + title` (title mode).
        slot_items: catalog row of each item slot, in placeholder order (history first, then candidates); each
            slot is written as `num_item_tokens` consecutive `<item>` placeholders.
        slot_recency: per slot, `n - i + 1` for history item i of n (1 = most recent), 0 for candidates.
        history: the history items kept (at most `max_history_len`, the most recent), oldest first.
        candidates: the candidates in presented order.
        target_index: position of the target in `candidates`.
    """

    prompt: str
    answer: str
    slot_items: list[int]
    slot_recency: list[int]
    history: list[int]
    candidates: list[int]
    target_index: int


def normalize_text(text: str) -> str:
    """Collapses whitespace (newlines included) so an item's text cannot break the prompt's line structure."""
    return " ".join(text.split())


class PromptBuilder:
    """Renders samples into prompts for a given config.

    Args:
        config: the model config (prompt style, answer mode, history length, SPAE flags, special tokens).
        item_titles: title per catalog row (None where unknown); needed by the `llara` and `text` styles and by
            title answers.
        item_texts: full text per catalog row (title + categories/description) for the `text` style; rows
            without one fall back to the title.
        prompt_style, answer_mode: override the config's.
        hybrid: `llara` style only; False writes titles without `<item>` (LLaRA's text-only prompt).
        num_items: catalog size used to reject unknown item indices; defaults to `len(item_titles)`, else
            `config.num_items` (0 means unchecked).
    """

    def __init__(
        self,
        config: SpeederConfig,
        item_titles: Sequence[str | None] | None = None,
        item_texts: Sequence[str | None] | None = None,
        prompt_style: str | None = None,
        answer_mode: str | None = None,
        hybrid: bool = True,
        num_items: int | None = None,
    ):
        self.config = config
        self.prompt_style = prompt_style or config.prompt_style
        self.answer_mode = answer_mode or config.answer_mode
        if self.prompt_style not in BUILDER_STYLES:
            raise ValueError(f"prompt_style must be one of {BUILDER_STYLES}, got {self.prompt_style!r}.")
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}.")
        self.item_titles = item_titles
        self.item_texts = item_texts
        self.hybrid = hybrid
        if num_items is None:
            num_items = len(item_titles) if item_titles is not None else config.num_items
        self.num_items = num_items
        if item_texts is not None and item_titles is not None and len(item_texts) != len(item_titles):
            raise ValueError(f"item_texts has {len(item_texts)} rows but item_titles has {len(item_titles)}.")
        self._item_slot = config.item_token * config.num_item_tokens
        image_token, num_image_tokens = getattr(config, "image_token", None), getattr(config, "num_image_tokens", 0)
        if self.prompt_style == "mllm" and (not image_token or not num_image_tokens):
            raise ValueError(
                "The mllm prompt style needs config.image_token and config.num_image_tokens > 0 (build the model "
                "with speeder_hf.baselines.MLLMForSequentialRec.from_llm)."
            )
        self._image_slot = image_token * num_image_tokens if image_token else ""
        # Text that would tokenize into a placeholder or position token would silently shift every item slot.
        reserved = [config.item_token, *config.position_tokens, *([image_token] if image_token else [])]
        self._reserved = re.compile("|".join(re.escape(token) for token in reserved))

    @property
    def has_slots(self) -> bool:
        """Whether prompts of this builder contain `<item>` placeholders."""
        return self.prompt_style in ("speeder", "mllm") or (self.prompt_style == "llara" and self.hybrid)

    def render(
        self,
        history: Sequence[int],
        candidates: Sequence[int],
        target: int,
        shuffle_seed: int | str | None = None,
    ) -> RenderedPrompt:
        """Renders one sample.

        Args:
            history: catalog rows, oldest first; only the most recent `max_history_len` are written.
            candidates: catalog rows, target included exactly once, in the order to present them.
            target: the catalog row of the next item.
            shuffle_seed: when given, the candidates are shuffled with `random.Random(shuffle_seed)` (the same
                seed always gives the same order) before being presented.

        Raises:
            ValueError: empty history, duplicate candidates, target not among candidates, more candidates than
                label tokens, unknown item index, or a title that is missing or contains a reserved token.
        """
        history, candidates, target = [int(i) for i in history], [int(i) for i in candidates], int(target)
        if not history:
            raise ValueError("Empty history: a sample needs at least one history item.")
        if len(set(candidates)) != len(candidates):
            duplicates = sorted({c for c in candidates if candidates.count(c) > 1})
            raise ValueError(f"Duplicate candidates {duplicates} in {candidates}.")
        if target not in candidates:
            raise ValueError(f"Target item {target} is not among the candidates {candidates}.")
        if self.answer_mode == "index" and len(candidates) > len(self.config.label_tokens):
            raise ValueError(
                f"{len(candidates)} candidates but only {len(self.config.label_tokens)} label tokens in the config."
            )
        for item in (*history, *candidates):
            self._check_known(item)
        if self.answer_mode == "title":
            for item in candidates:  # title answers are parsed against every candidate's title
                self._title(item)

        history = history[-self.config.max_history_len :]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(candidates)
        n = len(history)
        prompt = _TEMPLATES[self.prompt_style].format(
            history=self._render_history(history),
            candidates=self._render_candidates(candidates),
            num_candidates=len(candidates),
        )
        target_index = candidates.index(target)
        if self.answer_mode == "index":
            answer = " " + self.config.label_tokens[target_index]
        else:
            answer = " " + self._title(target)

        if self.has_slots:
            slot_items = history + candidates
            slot_recency = list(range(n, 0, -1)) + [0] * len(candidates)  # history item i of n: n - i + 1
        else:
            slot_items, slot_recency = [], []
        return RenderedPrompt(prompt, answer, slot_items, slot_recency, history, candidates, target_index)

    # ----- pieces ------------------------------------------------------------------------------------------
    def _render_history(self, history: list[int]) -> str:
        if self.prompt_style == "speeder":
            if self.config.spae_absolute:
                return "".join(p + self._item_slot for p, _ in zip(self.config.position_tokens, history))
            return ",".join(self._item_slot for _ in history)
        if self.prompt_style in ("llara", "mllm"):
            return ", ".join(self._titled_slot(item) for item in history)
        return "\n".join(self._text(item) for item in history)

    def _render_candidates(self, candidates: list[int]) -> str:
        labels = self.config.label_tokens
        if self.prompt_style == "speeder":
            if self.answer_mode == "index":
                return "".join(f" {label}{self._item_slot}" for label, _ in zip(labels, candidates))
            return ",".join(self._item_slot for _ in candidates)
        titled = self.prompt_style in ("llara", "mllm")
        bodies = [self._titled_slot(item) if titled else self._title(item) for item in candidates]
        if self.answer_mode == "index":
            bodies = [f"({label}) {body}" for label, body in zip(labels, bodies)]
        return ", ".join(bodies)

    def _titled_slot(self, item: int) -> str:
        if self.prompt_style == "mllm":
            return f"{self._title(item)} {self._image_slot}{self._item_slot}"
        return f"{self._title(item)} {self._item_slot}" if self.hybrid else self._title(item)

    def _title(self, item: int) -> str:
        title = self.item_titles[item] if self.item_titles is not None else None
        if title is None or not normalize_text(title):
            raise ValueError(
                f"Item {item} has no title, but prompt_style={self.prompt_style!r} with answer_mode="
                f"{self.answer_mode!r} needs titles (pass item_titles, or use the speeder style with index answers)."
            )
        return self._checked(item, normalize_text(title))

    def _text(self, item: int) -> str:
        text = self.item_texts[item] if self.item_texts is not None else None
        if text is None or not normalize_text(text):
            return self._title(item)
        return self._checked(item, normalize_text(text))

    def _checked(self, item: int, text: str) -> str:
        found = self._reserved.search(text)
        if found:
            raise ValueError(f"The text of item {item} contains the reserved token {found.group()!r}: {text!r}.")
        return text

    def _check_known(self, item: int) -> None:
        if item < 0 or (self.num_items and item >= self.num_items):
            known = (
                f"the catalog has {self.num_items} items (rows 0..{self.num_items - 1})"
                if self.num_items
                else ("item indices are catalog rows, >= 0")
            )
            raise ValueError(f"Unknown item index {item}: {known}.")


__all__ = ["BUILDER_STYLES", "PromptBuilder", "RenderedPrompt", "normalize_text"]
