"""`evaluate_ranking`: VHR@1 / ValidRatio / HR@1 and ranking metrics of a Speeder model on a validation or test
split (rows `{user_id, history, target, candidates}` with fixed candidates)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .collator import SpeederDataCollator
from .metrics import answer_metrics, bucket_indices, parse_title_answer, rank_metrics, target_ranks


def evaluate_ranking(
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
    ks: Iterable[int] = (1, 5, 10),
    show_progress: bool = True,
    num_examples: int = 0,
) -> dict[str, Any]:
    """Evaluates next-item prediction over each row's candidates, batched.

    - `index` answers: `model.score_candidates` scores every candidate label in one forward pass per batch. The
      answer is the top-scored candidate (ties count against the target), so every answer is valid
      (`ValidRatio` = 1, `VHR@1` = `HR@1`), and `HR@K`, `NDCG@K` (K in `ks`) and `MRR` come from the scores.
    - `title` answers: greedy generation with LLaRA's settings (`do_sample=False`, `num_beams=1`,
      `max_new_tokens`), first line, LLaRA's parser (`metrics.parse_title_answer`). No scores exist, so only
      `VHR@1`, `ValidRatio` and `HR@1` are reported.

    Args:
        model: a `SpeederForSequentialRec` (or a PEFT wrapper of one), with its item feature table set and the
            modalities to use active (e.g. `model.set_active_modalities(["id"])` for the llara style).
        tokenizer: the tokenizer saved with the model.
        dataset: rows (a list or a `datasets.Dataset`) with `history`, `candidates` (target included) and `target`.
        item_titles, item_texts: per catalog row; needed for titled prompt styles and title answers.
        answer_mode, prompt_style, hybrid: override the model config's prompt settings.
        max_length: token budget per prompt (oldest history items are dropped to fit).
        ks: cut-offs of `HR@K` / `NDCG@K`.
        num_examples: in title mode, how many of the first rows' generated answers to return (to see why answers
            are invalid).

    Returns:
        `VHR@1`, `ValidRatio`, `HR@1` (LLaRA: correct / valid), in index mode also `HR@K`, `NDCG@K`, `MRR`
        (over all samples); `num_samples`; `protocol` (candidate set size and answer mode); `answer_mode`;
        `prompt_style`; and `by_history_len`: the same metrics plus `num_samples` per history-length bucket
        (`"1-5"`, `"6-10"`, `"11-20"`, `">20"`, non-empty ones only; length of the row's history as given).
    """
    config = model.config
    collator = SpeederDataCollator(
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
    ks = tuple(ks)
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
    valid, correct, history_lens = np.concatenate(valid), np.concatenate(correct), np.concatenate(history_lens)
    ranks = np.concatenate(ranks) if ranks else None

    def summarise(index: np.ndarray | slice) -> dict[str, float]:
        metrics = answer_metrics(valid[index], correct[index])
        if ranks is not None:
            # The rank-based HR@1 equals LLaRA's HR@1 here (the answer is the top-ranked candidate, always valid).
            metrics.update({k: v for k, v in rank_metrics(ranks[index], ks).items() if k != "HR@1"})
        return metrics

    (size,) = num_candidates
    how = "label scores, one forward pass" if answer_mode == "index" else "greedy title generation, LLaRA parser"
    result = {
        **summarise(slice(None)),
        "num_samples": int(len(valid)),
        "protocol": f"{size} candidates (target + {size - 1} sampled negatives), {how}",
        "answer_mode": answer_mode,
        "prompt_style": collator.builder.prompt_style,
        "by_history_len": {
            bucket: {**summarise(index), "num_samples": int(len(index))}
            for bucket, index in bucket_indices(history_lens).items()
        },
    }
    if examples:
        result["examples"] = examples
    return result


__all__ = ["evaluate_ranking"]
