"""Evaluation of a Speeder model on a validation or test split (rows `{user_id, history, target, candidates}` with
fixed candidates): `evaluate_ranking` gives VHR@1 / ValidRatio / HR@1 and ranking metrics; `collect_outcomes` gives
the per-row outcomes they come from, so a long evaluation can run in parts and be summed up exactly."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..json_files import write_json
from ..metrics import answer_metrics, bucket_indices, parse_title_answer, rank_metrics, target_ranks
from ..processing.collator import SpeederDataCollator
from .title_answers import score_title_answers, title_answer_ids


@dataclass
class RankingOutcomes:
    """Per-row outcomes of an evaluation. Outcomes of disjoint parts of a split `concatenate` into those of the whole,
    and `summary` turns them into the metrics of `evaluate_ranking`.

    Attributes:
        valid: `(N,)` bool, the answer names one candidate (always true for index answers).
        correct: `(N,)` bool, the answer is the target.
        history_len: `(N,)` int, length of the row's history as given (for the history-length buckets).
        ranks: `(N,)` int, the target's 0-based rank among the candidates: by label score (index answers) or by
            title log-likelihood (title answers constrained to the candidates); None for free title answers.
        num_candidates: candidates per row.
        answer_mode, prompt_style: the protocol the rows were evaluated under.
        examples: title answers only, the first rows' generated texts (see `evaluate_ranking`'s `num_examples`).
        constrained: title answers were constrained to the candidates' titles (`constrain_to_candidates`).
        seconds: wall-clock seconds spent answering these rows, over every call a resumed evaluation took.
        parts: for an evaluation saved in parts (`collect_outcomes`' `resume_dir`), each part's `part_metadata`
            with its first row (`begin`) and `seconds`, in row order.
    """

    valid: np.ndarray
    correct: np.ndarray
    history_len: np.ndarray
    ranks: np.ndarray | None
    num_candidates: int
    answer_mode: str
    prompt_style: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    constrained: bool = False
    seconds: float = 0.0
    parts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def concatenate(cls, parts: Sequence[RankingOutcomes]) -> RankingOutcomes:
        """The outcomes of the parts' rows, in order. Raises ValueError if the parts were evaluated differently."""
        if not parts:
            raise ValueError("No outcomes to concatenate.")
        protocols = {(p.num_candidates, p.answer_mode, p.prompt_style, p.constrained) for p in parts}
        if len(protocols) > 1:
            raise ValueError(f"Outcomes under different protocols cannot be combined: {sorted(protocols)}.")
        first = parts[0]
        return cls(
            valid=np.concatenate([p.valid for p in parts]),
            correct=np.concatenate([p.correct for p in parts]),
            history_len=np.concatenate([p.history_len for p in parts]),
            ranks=None if first.ranks is None else np.concatenate([p.ranks for p in parts]),
            num_candidates=first.num_candidates,
            answer_mode=first.answer_mode,
            prompt_style=first.prompt_style,
            examples=[example for p in parts for example in p.examples],
            constrained=first.constrained,
            seconds=sum(p.seconds for p in parts),
            parts=[part for p in parts for part in p.parts],
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form; `from_dict` restores it exactly."""
        return {
            "valid": self.valid.tolist(),
            "correct": self.correct.tolist(),
            "history_len": self.history_len.tolist(),
            "ranks": None if self.ranks is None else self.ranks.tolist(),
            "num_candidates": self.num_candidates,
            "answer_mode": self.answer_mode,
            "prompt_style": self.prompt_style,
            "examples": self.examples,
            "constrained": self.constrained,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RankingOutcomes:
        ranks = values["ranks"]
        return cls(
            valid=np.array(values["valid"], dtype=bool),
            correct=np.array(values["correct"], dtype=bool),
            history_len=np.array(values["history_len"], dtype=np.int64),
            ranks=None if ranks is None else np.array(ranks, dtype=np.int64),
            num_candidates=int(values["num_candidates"]),
            answer_mode=values["answer_mode"],
            prompt_style=values["prompt_style"],
            examples=list(values["examples"]),
            constrained=bool(values.get("constrained", False)),  # parts saved before the option were free
            seconds=float(values.get("seconds", 0.0)),
        )

    def summary(self, ks: Iterable[int] = (1, 5, 10), num_examples: int | None = None) -> dict[str, Any]:
        """The metrics `evaluate_ranking` returns (see there), over these rows; `num_examples` caps the examples."""
        ks = tuple(ks)

        def summarise(index: np.ndarray | slice) -> dict[str, float]:
            metrics = answer_metrics(self.valid[index], self.correct[index])
            if self.ranks is not None:
                # HR@1 stays the answers' (LLaRA's): for index answers the rank-based one is equal (the answer is the
                # top-ranked candidate, always valid); for constrained titles the answer is greedy, the ranks are not.
                metrics.update({k: v for k, v in rank_metrics(self.ranks[index], ks).items() if k != "HR@1"})
            return metrics

        size = self.num_candidates
        if self.answer_mode == "index":
            how = "label scores, one forward pass"
        elif self.constrained:
            how = (
                "greedy title generation constrained to the candidates' titles (VHR@1, HR@1), candidates ranked by "
                "title log-likelihood (HR@K, NDCG@K, MRR)"
            )
        else:
            how = "greedy title generation, LLaRA parser"
        result = {
            **summarise(slice(None)),
            "num_samples": int(len(self.valid)),
            "protocol": f"{size} candidates (target + {size - 1} sampled negatives), {how}",
            "answer_mode": self.answer_mode,
            "prompt_style": self.prompt_style,
            "by_history_len": {
                bucket: {**summarise(index), "num_samples": int(len(index))}
                for bucket, index in bucket_indices(self.history_len).items()
            },
        }
        examples = self.examples[:num_examples]
        if examples:
            result["examples"] = examples
        return result


def evaluate_ranking(
    model,
    tokenizer,
    dataset: Sequence[dict[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    *,
    ks: Iterable[int] = (1, 5, 10),
    **options: Any,
) -> dict[str, Any]:
    """Evaluates next-item prediction over each row's candidates, batched (protocols and arguments: see
    `collect_outcomes`; `options` are its other arguments).

    Args:
        ks: cut-offs of `HR@K` / `NDCG@K` (index answers and constrained title answers).

    Returns:
        `VHR@1`, `ValidRatio`, `HR@1` (LLaRA: correct / valid), in index mode and for constrained title answers
        also `HR@K`, `NDCG@K`, `MRR` (over all samples; for constrained title answers from the log-likelihood
        ranks, so `NDCG@1`, the ranking's top-1 hit rate, can differ from `HR@1`, the greedy answer's);
        `num_samples`; `protocol` (candidate set size and answer mode); `answer_mode`; `prompt_style`;
        `by_history_len`: the same metrics plus `num_samples` per history-length bucket (`"1-5"`, `"6-10"`,
        `"11-20"`, `">20"`, non-empty ones only; length of the row's history as given); and, in title mode with
        `num_examples`, `examples`.
    """
    return collect_outcomes(model, tokenizer, dataset, item_titles, **options).summary(ks)


def collect_outcomes(
    model,
    tokenizer,
    dataset: Sequence[dict[str, Any]],
    item_titles: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    batch_size: int = 16,
    answer_mode: str | None = None,
    prompt_style: str | None = None,
    hybrid: bool = True,
    max_length: int | None = None,
    max_new_tokens: int = 64,
    show_progress: bool = True,
    num_examples: int = 0,
    collator_class: type[SpeederDataCollator] = SpeederDataCollator,
    constrain_to_candidates: bool = False,
    resume_dir: str | Path | None = None,
    part_metadata: Mapping[str, Any] | None = None,
) -> RankingOutcomes:
    """Answers each row's candidates, batched, and returns the per-row outcomes (`evaluate_ranking` summarises them).

    - `index` answers: `model.score_candidates` scores every candidate label in one forward pass per batch. The
      answer is the top-scored candidate (ties count against the target), so every answer is valid and the
      target's rank among the scores is kept (for `HR@K`, `NDCG@K`, `MRR`).
    - `title` answers: greedy generation with LLaRA's settings (`do_sample=False`, `num_beams=1`,
      `max_new_tokens`), first line, LLaRA's parser (`metrics.parse_title_answer`). No scores exist, so only
      validity and correctness are kept.
    - `title` answers with `constrain_to_candidates`: each candidate's answer is tokenized as training writes it
      (`title_answers.title_answer_ids`) and scored by its log-likelihood given the prompt
      (`title_answers.score_title_answers`: the prompt runs once, the candidates' answers from its KV cache). The
      answer is greedy generation restricted to the candidates' answers by a prefix trie, read off the same
      passes (equal to `model.generate` with a `TitleTrieLogitsProcessor`), so every answer is valid; it is
      correct when it is the target's title and no other candidate has that title (a shared title is a tie, and
      ties count against the target). VHR@1 and HR@1 are the greedy answer's; the target's rank by
      log-likelihood (ties against it) gives `HR@K`, `NDCG@K` and `MRR`. The two may disagree at the top: greedy
      commits to its first token, the ranking scores whole answers. `max_new_tokens` is not used: answers end
      with the longest title.

    Args:
        model: a `SpeederForSequentialRec` (or a PEFT wrapper of one), with its item feature table set and the
            modalities to use active (e.g. `model.set_active_modalities(["id"])` for the llara style).
        tokenizer: the tokenizer saved with the model.
        dataset: rows (a list or a `datasets.Dataset`) with `history`, `candidates` (target included) and `target`.
        item_titles, item_texts: per catalog row; needed for titled prompt styles and title answers.
        answer_mode, prompt_style, hybrid: override the model config's prompt settings.
        max_length: token budget per prompt (oldest history items are dropped to fit).
        num_examples: in title mode, how many of the first rows' generated answers to keep (to see why answers
            are invalid).
        collator_class: the collator that renders the prompts: `SpeederDataCollator`, or a subclass for a prompt
            style of its own (`benchmarks.baselines.MLLMDataCollator`).
        constrain_to_candidates: title answers only; restrict them to the candidates' titles and rank the
            candidates by title log-likelihood (see above).
        resume_dir: evaluate `batch_size` rows at a time and save each part's outcomes in this folder as it
            finishes (`rows-<first row>.json`), so an interrupted evaluation loses at most one batch. A later call
            with the same folder reuses each part saved for the same rows (a fingerprint of user, history, target
            and candidates) and answers only the others. The model is not checked: one folder per trained model.
        part_metadata: JSON values saved with each part this call answers (say, which sitting ran it); returned in
            the outcomes' `parts`.

    Raises:
        ValueError: on an empty dataset, rows with different numbers of candidates, title answers without
            `item_titles`, or `constrain_to_candidates` with index answers.
    """
    options = dict(
        item_titles=item_titles,
        item_texts=item_texts,
        batch_size=batch_size,
        answer_mode=answer_mode,
        prompt_style=prompt_style,
        hybrid=hybrid,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        num_examples=num_examples,
        collator_class=collator_class,
        constrain_to_candidates=constrain_to_candidates,
    )
    if resume_dir is None:
        started = time.perf_counter()
        outcomes = _answer_rows(model, tokenizer, dataset, show_progress=show_progress, **options)
        outcomes.seconds = round(time.perf_counter() - started, 1)
        return outcomes
    folder = Path(resume_dir)
    parts = []
    starts = range(0, len(dataset), batch_size)
    for begin in tqdm(starts, desc="Evaluating (saved in parts)", disable=not show_progress):
        rows = _rows(dataset, begin, min(begin + batch_size, len(dataset)))
        path = folder / f"rows-{begin:06d}.json"
        key = rows_fingerprint(rows)
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if saved is None or saved.get("rows") != key:
            started = time.perf_counter()
            outcomes = _answer_rows(model, tokenizer, rows, show_progress=False, **options)
            outcomes.seconds = round(time.perf_counter() - started, 1)
            saved = {"rows": key, **dict(part_metadata or {}), **outcomes.to_dict()}
            write_json(path, saved)
        outcomes = RankingOutcomes.from_dict(saved)
        stored = outcomes.to_dict().keys() | {"rows"}  # what the part holds besides its metadata
        metadata = {k: v for k, v in saved.items() if k not in stored}
        outcomes.parts = [{"begin": begin, "seconds": outcomes.seconds, **metadata}]
        parts.append(outcomes)
    if not parts:
        raise ValueError("The dataset is empty.")
    return RankingOutcomes.concatenate(parts)


def rows_fingerprint(rows: Iterable[Mapping[str, Any]]) -> str:
    """Identifies evaluation rows by what is evaluated: user, history, target and candidates."""
    fields = [(row.get("user_id"), list(row["history"]), row["target"], list(row["candidates"])) for row in rows]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _rows(dataset, begin: int, end: int):
    """Rows `begin:end` of a list or a `datasets.Dataset`."""
    return dataset.select(range(begin, end)) if hasattr(dataset, "select") else dataset[begin:end]


def _answer_rows(
    model,
    tokenizer,
    dataset,
    *,
    item_titles,
    item_texts,
    batch_size,
    answer_mode,
    prompt_style,
    hybrid,
    max_length,
    max_new_tokens,
    show_progress,
    num_examples,
    collator_class,
    constrain_to_candidates,
) -> RankingOutcomes:
    """`collect_outcomes` on rows answered in one go."""
    config = model.config
    collator = collator_class(
        tokenizer,
        config,
        item_titles=item_titles,
        item_texts=item_texts,
        mode="eval",
        max_length=max_length,
        return_metadata=True,
        prompt_style=prompt_style,
        answer_mode=answer_mode,
        hybrid=hybrid,
    )
    answer_mode = collator.builder.answer_mode
    if answer_mode == "title" and item_titles is None:
        raise ValueError("Title answers are parsed against candidate titles: pass item_titles.")
    if constrain_to_candidates and answer_mode != "title":
        raise ValueError(
            f"constrain_to_candidates restricts title answers to the candidates' titles, but answer_mode is "
            f"{answer_mode!r}: index answers are always a candidate already. Use answer_mode='title'."
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)

    valid, correct, ranks, history_lens, num_candidates, examples = [], [], [], [], set(), []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"Evaluating ({answer_mode} answers)", disable=not show_progress):
                meta = SpeederDataCollator.pop_metadata(batch)
                batch = {key: value.to(model.device) for key, value in batch.items()}
                candidates, target_index = meta["candidate_items"], meta["target_index"]
                num_candidates.add(candidates.shape[1])
                if answer_mode == "index":
                    scores = model.score_candidates(num_candidates=candidates.shape[1], **batch)  # (B, C)
                    batch_ranks = target_ranks(scores, target_index)
                    ranks.append(batch_ranks)
                    valid.append(np.ones(len(batch_ranks), dtype=bool))
                    correct.append(batch_ranks == 0)
                elif constrain_to_candidates:
                    answers = [[title_answer_ids(tokenizer, item_titles[item]) for item in row.tolist()]
                               for row in candidates]  # fmt: skip
                    scored = score_title_answers(model, answers, **batch)
                    ranks.append(target_ranks(scored.log_likelihoods, target_index))
                    valid.append(np.ones(len(scored.picks), dtype=bool))
                    correct.append(np.array([p == [t] for p, t in zip(scored.picks, target_index.tolist())]))
                    texts = tokenizer.batch_decode(scored.answers, skip_special_tokens=True)
                    room = max(num_examples - len(examples), 0)
                    examples += [
                        {
                            "generated": text,
                            "target_title": item_titles[row[t].item()],
                            "valid": True,
                            "correct": bool(hit),
                        }
                        for text, row, t, hit in itertools.islice(
                            zip(texts, candidates, target_index.tolist(), correct[-1]), room
                        )
                    ]
                else:
                    new_tokens = model.generate(
                        **batch,
                        do_sample=False,
                        num_beams=1,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                    )  # (B, <= max_new_tokens), new tokens only
                    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                    picks = [
                        parse_title_answer(text, [item_titles[item] for item in row.tolist()])
                        for text, row in zip(texts, candidates)
                    ]
                    valid.append(np.array([pick is not None for pick in picks], dtype=bool))
                    correct.append(np.array([pick == t for pick, t in zip(picks, target_index.tolist())], dtype=bool))
                    room = max(num_examples - len(examples), 0)
                    answers = zip(texts, candidates, target_index.tolist(), valid[-1], correct[-1])
                    examples += [
                        {
                            "generated": text,
                            "target_title": item_titles[row[t].item()],
                            "valid": bool(ok),
                            "correct": bool(hit),
                        }
                        for text, row, t, ok, hit in itertools.islice(answers, room)
                    ]
                history_lens.append(meta["history_len"].numpy())
    finally:
        model.train(was_training)

    if not valid:
        raise ValueError("The dataset is empty.")
    if len(num_candidates) > 1:
        raise ValueError(
            f"Rows have different numbers of candidates {sorted(num_candidates)}; metrics would mix protocols."
        )
    (size,) = num_candidates
    return RankingOutcomes(
        valid=np.concatenate(valid),
        correct=np.concatenate(correct),
        history_len=np.concatenate(history_lens),
        ranks=np.concatenate(ranks) if ranks else None,
        num_candidates=size,
        answer_mode=answer_mode,
        prompt_style=collator.builder.prompt_style,
        examples=examples,
        constrained=constrain_to_candidates,
    )


__all__ = ["RankingOutcomes", "collect_outcomes", "evaluate_ranking", "rows_fingerprint"]
