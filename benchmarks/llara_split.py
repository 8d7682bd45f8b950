"""LLaRA's own MovieLens-100K split as a dataset folder the main job reads (`speeder-hf train --dataset <folder>`).

LLaRA splits MovieLens-100K by user: about 10% of the users give one validation window each, 10% one test window
(ten history items and the next one, `Val_data.jsonl`, `Test_data.jsonl`, no user ids), and the other users' windows
train. Its training windows are not published in a form that loads without unpickling, so this builds the training
part from the raw ratings (`u.data`) instead: each validation or test window is matched to the one user whose ratings
hold all of its eleven `(movie, rating)` pairs, those users are held out, and every other user gives one training
window, their whole time-ordered history with its last rating the target. That is the one difference from LLaRA's
own training data, which slides windows of ten over the same users.

    python -m benchmarks.llara_split --out outputs/llara_movielens
    speeder-hf train --dataset outputs/llara_movielens --output_dir outputs/speeder-llara-movielens
    python -m benchmarks.llara_split --out outputs/llara_movielens --model_dir outputs/speeder-llara-movielens \
        --results benchmarks/results/llara_split.json

The last command evaluates the saved model and its SASRec again on the same 95 test windows and candidates, per
user, and writes both with a paired test and LLaRA's published figure.

The folder links `u.item` and LLaRA's files from `--data_root` instead of copying them: MovieLens' terms forbid
redistribution, so keep the folder out of git.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speeder_hf.catalog.sasrec import sasrec_ranks
from speeder_hf.data import load_dataset_by_name, make_split
from speeder_hf.data.llara import LLARA_FILES, LLARA_MIN_HISTORY
from speeder_hf.data.reading import DataFormatError, read_records
from speeder_hf.evaluation.ranking import collect_outcomes
from speeder_hf.evaluation.report import EvaluationReport
from speeder_hf.json_files import write_json
from speeder_hf.metrics import mcnemar_test, rank_metrics
from speeder_hf.serving.bundle import load_pretrained_bundle

from .arguments import parse_arguments
from .bookkeeping import REPO, RESULTS_DIR, command_line, machine_description, setup_logging, today

logger = logging.getLogger("benchmarks.llara_split")


@dataclass
class LlaraSplitArguments:
    """The flags of `python -m benchmarks.llara_split`."""

    out: Path = field(default=REPO / "outputs" / "llara_movielens", metadata={"help": "folder to write"})
    data_root: Path = field(
        default=REPO.parent / "shared" / "data" / "llara_movielens",
        metadata={"help": "LLaRA's MovieLens folder: Val_data.jsonl, Test_data.jsonl, u.item, ml-100k_u.data"},
    )
    model_dir: Path | None = field(default=None, metadata={"help": "a model the job trained on --out, to compare"})
    results: Path = field(default=RESULTS_DIR / "llara_split.json", metadata={"help": "the comparison's JSON"})


# LLaRA's README: VHR@1 of LLaRA (Llama2-7B) on this test file, 95 users.
LLARA_PUBLISHED = {"VHR@1": 0.4526, "num_samples": 95, "backbone": "Llama2-7B", "source": "ljy0ustc/LLaRA README"}


def user_sequences(ratings: Path) -> dict[str, list[tuple[int, int]]]:
    """Each user's `(LLaRA id, rating)` pairs in time order (ties in file order); LLaRA id = movie id - 1."""
    rows: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    with ratings.open(encoding="utf-8") as lines:
        for number, (user, movie, rating, stamp) in enumerate(csv.reader(lines, delimiter="\t")):
            rows[user].append((int(stamp), number, int(movie) - 1, int(rating)))
    return {user: [(movie, rating) for _, _, movie, rating in sorted(seq)] for user, seq in rows.items()}


def held_out_users(sequences: dict[str, list[tuple[int, int]]], window_file: Path) -> list[str]:
    """The user of each window of `window_file`: the one whose ratings hold all of its `(movie, rating)` pairs.

    Raises:
        DataFormatError: a window matches no user or several.
    """
    pairs_of = {user: set(seq) for user, seq in sequences.items()}
    users = []
    for number, record in read_records(window_file):
        window = {tuple(pair) for pair in record["seq"][: record["len_seq"]]} | {tuple(record["next"])}
        holders = [user for user, pairs in pairs_of.items() if window <= pairs]
        if len(holders) != 1:
            raise DataFormatError(window_file, number, f"the window matches {len(holders)} users of u.data, not 1.")
        users.append(holders[0])
    return users


def build(args: LlaraSplitArguments) -> dict[str, Any]:
    """Writes the folder; returns how many users each part has."""
    sequences = user_sequences(args.data_root / "ml-100k_u.data")
    held_out = {
        split: held_out_users(sequences, args.data_root / LLARA_FILES[split]) for split in ("validation", "test")
    }
    excluded = set(held_out["validation"]) | set(held_out["test"])
    args.out.mkdir(parents=True, exist_ok=True)
    training = 0
    with (args.out / LLARA_FILES["train"]).open("w", encoding="utf-8") as out:
        for user, seq in sequences.items():
            if user in excluded or len(seq) < LLARA_MIN_HISTORY + 1:
                continue
            history = [list(pair) for pair in seq[:-1]]
            out.write(json.dumps({"seq": history, "len_seq": len(history), "next": list(seq[-1])}) + "\n")
            training += 1
    for name in (LLARA_FILES["validation"], LLARA_FILES["test"], "u.item"):
        link = args.out / name
        link.unlink(missing_ok=True)
        link.symlink_to((args.data_root / name).resolve())
    summary = {
        "training_users": training,
        "validation_users": len(held_out["validation"]),
        "test_users": len(held_out["test"]),
        "users_in_both": len(set(held_out["validation"]) & set(held_out["test"])),
    }
    write_json(args.out / "llara_split.json", summary)
    return summary


def compare(folder: Path, model_dir: Path) -> dict[str, Any]:
    """Speeder (the bundle in `model_dir`) and the SASRec saved with it on the test windows of `folder`, split and
    candidates drawn with the job's own settings (read from its `eval_results.json`), per user, with McNemar's
    paired test of their top-1 hits."""
    report = EvaluationReport.load(model_dir)
    settings = {key: report.arguments[key] for key in ("num_candidates", "seed", "max_history_len")}
    test = make_split(load_dataset_by_name(str(folder)), **settings)["test"]
    model, tokenizer, catalog, sasrec = load_pretrained_bundle(model_dir)
    outcomes = collect_outcomes(model, tokenizer, test, catalog.titles, catalog.texts, show_progress=False)
    speeder = outcomes.summary()
    if abs(speeder["VHR@1"] - report.metrics["VHR@1"]) > 1e-9:
        raise ValueError(f"{model_dir}: VHR@1 {speeder['VHR@1']} here, {report.metrics['VHR@1']} in its report.")
    ranks, _ = sasrec_ranks(sasrec, test, full_ranking=False, progress=False)
    return {
        "speeder": {key: speeder[key] for key in ("VHR@1", "HR@5", "NDCG@10", "MRR", "num_samples")},
        "SASRec": {"VHR@1": float(np.mean(ranks == 0)), **rank_metrics(ranks), "num_samples": len(ranks)},
        "speeder_vs_sasrec": mcnemar_test(outcomes.valid & outcomes.correct, ranks == 0),
        "llara_published": LLARA_PUBLISHED,
        # One 95-user hit rate near 0.45 has a standard error of about 0.05: gaps under about 0.1 are noise.
        "standard_error_at_0.45": round(math.sqrt(0.45 * 0.55 / len(ranks)), 3),
        "speeder_train_seconds": report.train_seconds,
        "speeder_command": report.command,
        "speeder_arguments": report.arguments,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args, _ = parse_arguments(LlaraSplitArguments, argv, __doc__.splitlines()[0])
    summary = build(args)
    logger.info("%s: %s", args.out, summary)
    if args.model_dir is None:
        return summary
    result = {
        "command": command_line("benchmarks.llara_split", argv),
        "date": today(),
        "machine": machine_description(),
        "split": summary,
        **compare(args.out, args.model_dir),
    }
    write_json(args.results, result)
    logger.info("%s: Speeder %s, SASRec %s", args.results, result["speeder"], result["SASRec"])
    return result


if __name__ == "__main__":
    main()
