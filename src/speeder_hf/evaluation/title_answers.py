"""Title answers restricted to a row's candidates: the answer tokens of each candidate's title, a prefix trie over
them, a logits processor that lets `generate` write only those answers, and title log-likelihood scoring, which ranks
every candidate and gives the trie-constrained greedy answer from the same forward passes.

An answer is tokenized exactly as training writes it (`SpeederDataCollator`): `" " + title` (whitespace collapsed)
tokenized on its own, without special tokens, then eos. Tokenizing it apart from the prompt matters for BPE
tokenizers, which split a title differently at the start of a text than after other words.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from ..processing.prompts import normalize_text


def title_answer_ids(tokenizer: PreTrainedTokenizerBase, title: str) -> list[int]:
    """The token ids a title answer is trained on: `" " + title` (whitespace collapsed), then eos.

    Raises:
        ValueError: if the tokenizer has no eos token or the title is empty.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("Title answers end with eos, but the tokenizer has no eos token.")
    text = normalize_text(title or "")
    if not text:
        raise ValueError(f"Empty title {title!r}: a title answer needs text.")
    return [*tokenizer(" " + text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


class _Node:
    __slots__ = ("children", "ends")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.ends: list[int] = []  # candidates whose answer ends here


class TitleTrie:
    """A prefix trie over one row's candidate answers (token sequences, as `title_answer_ids` writes them).

    A title that is a prefix of another stays distinct, since every answer ends in eos; candidates with the same
    title share one path and its end.
    """

    def __init__(self, answers: Sequence[Sequence[int]]):
        if not answers or any(len(answer) == 0 for answer in answers):
            raise ValueError("A title trie needs at least one answer, each with at least one token.")
        self.answers = [list(answer) for answer in answers]
        self._root = _Node()
        for index, answer in enumerate(self.answers):
            node = self._root
            for token in answer:
                node = node.children.setdefault(int(token), _Node())
            node.ends.append(index)

    @property
    def max_length(self) -> int:
        """Tokens in the longest answer."""
        return max(len(answer) for answer in self.answers)

    def _walk(self, prefix: Sequence[int]) -> _Node | None:
        node = self._root
        for token in prefix:
            node = node.children.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow `prefix` (sorted); empty after a complete answer.

        Raises:
            ValueError: if `prefix` does not start any answer.
        """
        node = self._walk(prefix)
        if node is None:
            raise ValueError(f"The tokens {list(prefix)} do not start any candidate's title answer.")
        return sorted(node.children)

    def candidates(self, answer: Sequence[int]) -> list[int]:
        """Indices of the candidates whose answer is exactly `answer` (more than one for duplicate titles)."""
        node = self._walk(answer)
        return list(node.ends) if node is not None else []


class TitleTrieLogitsProcessor(LogitsProcessor):
    """Lets `generate` write only a candidate's title answer, row by row (pass it in `logits_processor`).

    Every token outside the row's trie gets `-inf`, so greedy or beam search ends in a complete answer within
    `max(trie.max_length)` new tokens. A row stops being masked once it wrote eos (generation pads it from then on).
    It works whether the `input_ids` generation shows it hold the prompt or, as with `inputs_embeds`-only generation
    (`SpeederForSequentialRec.generate`), only the new tokens: the answer starts at the length of the first call's
    `input_ids`, so use a fresh processor for each `generate` call.

    Args:
        tries: one trie per row of the batch, in batch order.
        eos_token_id: the token that ends an answer.
    """

    def __init__(self, tries: Sequence[TitleTrie], eos_token_id: int):
        self.tries, self.eos_token_id, self._start = list(tries), int(eos_token_id), None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.tries):  # beam search or num_return_sequences would repeat rows
            raise ValueError(f"{len(self.tries)} tries for a batch of {input_ids.shape[0]} sequences.")
        if self._start is None:
            self._start = input_ids.shape[1]
        allowed = torch.zeros_like(scores, dtype=torch.bool)  # (B, V)
        for row, (trie, tokens) in enumerate(zip(self.tries, input_ids[:, self._start :].tolist())):
            if self.eos_token_id in tokens:
                allowed[row] = True  # finished: generation replaces its tokens by padding
            else:
                allowed[row, trie.allowed(tokens)] = True
        return scores.masked_fill(~allowed, float("-inf"))


@dataclass
class TitleAnswerScores:
    """What `score_title_answers` finds for a batch of B rows with C candidates each.

    Attributes:
        log_likelihoods: `(B, C)` float32, the sum of the log-probabilities of each candidate's answer tokens (eos
            included) given the prompt.
        answers: per row, the greedy answer within the row's trie (token ids, eos included).
        picks: per row, the candidates whose answer that is (one, or several when they share the title).
    """

    log_likelihoods: torch.Tensor
    answers: list[list[int]]
    picks: list[list[int]]


def _repeat_row_of_cache(cache, row: int, repeats: int):
    """A cache holding batch row `row` of `cache` `repeats` times; the original is left as it was.

    The repeats are stride-0 views of the row, not copies: the next forward concatenates its new keys and values to
    them, which writes the repeated cache once. Copying here first would write it twice, and on a CPU moving the
    prompt's cache (about 0.5 GB for 20 repeats of a 550-token SmolLM2 prompt) costs about as much as the answers'
    compute. Layers are copied shallowly, so rebinding their tensors leaves `cache` intact.
    """
    repeated = copy.copy(cache)
    repeated.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in repeated.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[row : row + 1].expand(repeats, *layer.keys.shape[1:])
            layer.values = layer.values[row : row + 1].expand(repeats, *layer.values.shape[1:])
    return repeated


@torch.no_grad()
def score_title_answers(
    model,
    answers: Sequence[Sequence[Sequence[int]]],
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    max_sequences: int = 64,
    **item_kwargs,
) -> TitleAnswerScores:
    """Scores every candidate's title answer by its log-likelihood given the prompt, and finds the greedy answer
    within the candidates' trie, from one prompt pass and one pass over the candidates' answers.

    The prompts (left or right padded, as the eval collator gives them) run once with the KV cache on. Each row's
    cache is then repeated once per candidate (one row, at most `max_sequences` continuations, per pass, which bounds
    the memory of the repeated cache: per continuation, the prompt's keys and values) and all answer tokens of a
    candidate go through the LM in one forward, right-padded. Position ids follow the real tokens, as `generate`
    sets them.

    The score is the sum of the answer tokens' log-probabilities, not normalised by length: it is the probability
    the model gives the whole answer, as LLaRA/TALLRec-style rankers score, and the eos that ends every answer
    already makes a short title that is the prefix of a longer one pay for stopping. A length-normalised score
    would favour long titles whose later tokens are near-certain once the first is written.

    The greedy answer takes, at each step, the allowed token with the highest probability (ties to the lower token
    id, as `argmax` does), which is what `model.generate` with a `TitleTrieLogitsProcessor` and greedy search writes
    when the generation config adds no other logits processor. Greedy and the best-scoring answer may differ: greedy
    commits to its first token.

    Args:
        model: a `SpeederForSequentialRec` (or subclass, or a PEFT wrapper of one).
        answers: `answers[b][c]`, the token ids of candidate c's answer in row b (`title_answer_ids`).
        input_ids, attention_mask: `(B, S)` prompts ending where the answer begins.
        max_sequences: most continuations per forward pass (each pass holds one row's candidates).
        **item_kwargs: the item-slot inputs of `embed_inputs` (`item_ids`, `item_recency`, ...); other collator
            outputs a title answer does not read (`prior_history`, `candidate_ids`, `token_type_ids`) are ignored.

    Raises:
        ValueError: if `answers` does not have one list of C non-empty answers per prompt.
    """
    num_rows = input_ids.shape[0]
    sizes = {len(row) for row in answers}
    if len(answers) != num_rows or len(sizes) != 1 or any(len(a) == 0 for row in answers for a in row):
        raise ValueError(
            f"Pass one list of candidate answers per prompt, each of the same size and non-empty: {num_rows} "
            f"prompts, answer lists of sizes {sorted(sizes)}."
        )
    (num_candidates,) = sizes
    for key in ("token_type_ids", "prior_history", "candidate_ids"):
        item_kwargs.pop(key, None)
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.long()
    language_model = model.language_model

    # The prompt pass: the KV cache, and the distribution of each row's first answer token.
    inputs_embeds, _ = model.embed_inputs(input_ids, **item_kwargs)  # (B, S, d)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, S), as generate sets them under padding
    lengths = attention_mask.sum(-1)  # (B,) real tokens per prompt
    last = attention_mask.cumsum(-1).argmax(-1)  # (B,) last real token, whatever the padding
    kept = last.unique()  # sorted; the LM head at these positions only
    prompt = language_model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=kept,
    )
    rows = torch.arange(num_rows, device=device)
    first = prompt.logits[rows, torch.searchsorted(kept, last)].float().log_softmax(-1)  # (B, V)

    # token_log_probs[b][c][j]: log p(answer token j | prompt, answer tokens < j)
    token_log_probs = [[[first[b, answers[b][c][0]].item()] for c in range(num_candidates)] for b in range(num_rows)]
    # One row's candidates per pass (at most max_sequences of them), so the row's cache is repeated as a view.
    chunks = [
        [(b, c) for c in candidates[start : start + max_sequences]]
        for b in range(num_rows)
        if (candidates := [c for c in range(num_candidates) if len(answers[b][c]) > 1])
        for start in range(0, len(candidates), max_sequences)
    ]
    embeddings = model.get_input_embeddings()
    for chunk in chunks:
        # Inputs are each answer but its last token (which predicts nothing), right-padded with a masked token.
        width = max(len(answers[b][c]) - 1 for b, c in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long, device=device)  # (n, W)
        targets = torch.zeros_like(tokens)  # (n, W): the token each input predicts
        real = torch.zeros_like(tokens)  # (n, W)
        for i, (b, c) in enumerate(chunk):
            answer = torch.tensor(answers[b][c], device=device)
            tokens[i, : len(answer) - 1], targets[i, : len(answer) - 1] = answer[:-1], answer[1:]
            real[i, : len(answer) - 1] = 1
        row = chunk[0][0]
        cache = _repeat_row_of_cache(prompt.cache, row, len(chunk))
        mask = torch.cat([attention_mask[row].expand(len(chunk), -1), real], dim=-1)  # (n, S + W)
        continuation_positions = (lengths[row] + torch.arange(width, device=device)).expand(len(chunk), -1)  # (n, W)
        logits = language_model(
            inputs_embeds=embeddings(tokens),
            attention_mask=mask,
            position_ids=continuation_positions,
            cache=cache,
            use_cache=True,
        ).logits  # (n, W, V)
        picked = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n, W)
        for i, (b, c) in enumerate(chunk):
            token_log_probs[b][c] += picked[i, : len(answers[b][c]) - 1].tolist()
        del cache, logits

    log_likelihoods = torch.tensor([[sum(lp) for lp in row] for row in token_log_probs], dtype=torch.float32)
    greedy = [_greedy_answer(row_answers, row_lps) for row_answers, row_lps in zip(answers, token_log_probs)]
    picks = [TitleTrie(row_answers).candidates(answer) for row_answers, answer in zip(answers, greedy)]
    return TitleAnswerScores(log_likelihoods, greedy, picks)


def _greedy_answer(answers: Sequence[Sequence[int]], token_log_probs: Sequence[Sequence[float]]) -> list[int]:
    """Greedy decoding within a row's trie, read off the per-candidate token log-probabilities: the log-probability
    of a child token given its prefix is that of any candidate whose answer passes through the child."""
    alive, answer = list(range(len(answers))), []
    while True:
        depth = len(answer)
        # Candidates that end here have no next token; an answer ends in eos, so none ends while others go on.
        options = {}
        for c in alive:
            if len(answers[c]) > depth:
                options.setdefault(int(answers[c][depth]), token_log_probs[c][depth])
        if not options:
            return answer
        token = max(sorted(options), key=lambda t: options[t])  # first maximum: the lowest token id on ties
        answer.append(token)
        alive = [c for c in alive if len(answers[c]) > depth and answers[c][depth] == token]


__all__ = [
    "TitleAnswerScores",
    "TitleTrie",
    "TitleTrieLogitsProcessor",
    "score_title_answers",
    "title_answer_ids",
]
