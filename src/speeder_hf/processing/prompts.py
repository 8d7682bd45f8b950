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

A subclass adds a style by extending `STYLES` and `TEMPLATES` and overriding how an item is written
(`titled_item`), which items have slots (`has_slots`) and which tokens no text may contain (`reserved_tokens`), as
the benchmarks' uncompressed multimodal baseline does (`benchmarks.baselines.MLLMPromptBuilder`).

In `index` answer mode candidates are labelled in every style (`(A) {title}` in the titled styles) and the answer is
`" " + label`, one token; in `title` answer mode the answer is `" " + title` of the target. Position tokens are
written only by the `speeder` style.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..model.configuration_speeder import ANSWER_MODES, PROMPT_STYLES, SpeederConfig

LLARA_TEMPLATE = (
    "This user has interacted with {history} in the previous. Please predict the next item this user will "
    "interact with. Choose the answer from the following {num_candidates} candidates: {candidates}. Answer:"
)
TEMPLATES = {
    "speeder": (
        "A user interacted with these items, oldest first:{history}.\n"
        "Which item will the user interact with next? Candidates:{candidates}.\nAnswer:"
    ),
    "llara": LLARA_TEMPLATE,
    "text": (
        "A user interacted with these items, oldest first:\n{history}\n"
        "Which item will the user interact with next? Candidates: {candidates}.\nAnswer:"
    ),
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

    Attributes:
        STYLES: the prompt styles this builder renders.
        TEMPLATES: the instruction of each style, with `{history}`, `{candidates}` and `{num_candidates}`.
        TITLED_STYLES: the styles that write each item as its title (with its slot in hybrid prompts), through
            `titled_item`.
    """

    STYLES: ClassVar[tuple[str, ...]] = PROMPT_STYLES
    TEMPLATES: ClassVar[dict[str, str]] = TEMPLATES
    TITLED_STYLES: ClassVar[tuple[str, ...]] = ("llara",)

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
        if self.prompt_style not in self.STYLES:
            raise ValueError(f"prompt_style must be one of {self.STYLES}, got {self.prompt_style!r}.")
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
        self.item_slot = config.item_token * config.num_item_tokens
        # Text that would tokenize into a placeholder or position token would silently shift every item slot.
        self._reserved = re.compile("|".join(re.escape(token) for token in self.reserved_tokens()))

    @property
    def has_slots(self) -> bool:
        """Whether prompts of this builder contain `<item>` placeholders."""
        return self.prompt_style == "speeder" or (self.prompt_style in self.TITLED_STYLES and self.hybrid)

    def reserved_tokens(self) -> list[str]:
        """The tokens no item text may contain: the item placeholder and the position tokens."""
        return [self.config.item_token, *self.config.position_tokens]

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
                self.title_of(item)

        history = history[-self.config.max_history_len :]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(candidates)
        n = len(history)
        prompt = self.TEMPLATES[self.prompt_style].format(
            history=self._render_history(history),
            candidates=self._render_candidates(candidates),
            num_candidates=len(candidates),
        )
        target_index = candidates.index(target)
        if self.answer_mode == "index":
            answer = " " + self.config.label_tokens[target_index]
        else:
            answer = " " + self.title_of(target)

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
                return "".join(p + self.item_slot for p, _ in zip(self.config.position_tokens, history))
            return ",".join(self.item_slot for _ in history)
        if self.prompt_style in self.TITLED_STYLES:
            return ", ".join(self.titled_item(item) for item in history)
        return "\n".join(self._text(item) for item in history)

    def _render_candidates(self, candidates: list[int]) -> str:
        labels = self.config.label_tokens
        if self.prompt_style == "speeder":
            if self.answer_mode == "index":
                return "".join(f" {label}{self.item_slot}" for label, _ in zip(labels, candidates))
            return ",".join(self.item_slot for _ in candidates)
        titled = self.prompt_style in self.TITLED_STYLES
        bodies = [self.titled_item(item) if titled else self.title_of(item) for item in candidates]
        if self.answer_mode == "index":
            bodies = [f"({label}) {body}" for label, body in zip(labels, bodies)]
        return ", ".join(bodies)

    def titled_item(self, item: int) -> str:
        """An item as a titled style writes it: `{title} <item>` (hybrid prompts) or `{title}`."""
        return f"{self.title_of(item)} {self.item_slot}" if self.hybrid else self.title_of(item)

    def title_of(self, item: int) -> str:
        """The title of catalog row `item` as prompts write it (whitespace collapsed, reserved tokens refused)."""
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
            return self.title_of(item)
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


__all__ = ["LLARA_TEMPLATE", "TEMPLATES", "PromptBuilder", "RenderedPrompt", "normalize_text"]
