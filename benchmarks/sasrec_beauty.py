"""SASRec on Amazon Beauty (leave-one-out), the collaborative baseline and the source of the `id` modality.

Measures, on the test users:
- full ranking over all items except the user's history (the S3Rec/SASRec protocol; published SASRec on this data:
  HR@10 0.0605, NDCG@10 0.0318);
- the 20-candidate protocol Speeder is evaluated on (1 target + 19 uniform negatives outside the user's items,
  fixed by the split seed), with histories cut to 20 (Speeder's default) and 50 items.

Writes a JSON report (metrics, training log, settings, machine, command) and optionally the trained model and its
item-embedding features (`--export`), for `ItemCatalog.add_features("id", ...)`.

    python -m benchmarks.sasrec_beauty   # CPU default: sampled softmax, 40 epochs, about 10 minutes on 2 cores

The defaults fit a 2-core CPU in under 15 minutes; on a GPU, `--loss ce --num_epochs 200` (early stopping) gives the
full-softmax model (`benchmarks/results/sasrec_beauty_h200_ce.json`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from speeder_hf.catalog.sasrec import evaluate_sasrec, sasrec_item_features, train_sasrec
from speeder_hf.data import load_s3rec, make_split, training_sequences

from .arguments import parse_arguments
from .bookkeeping import command_line, machine_description

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {"full_HR@10": 0.0605, "full_NDCG@10": 0.0318, "source": "S3Rec paper (CIKM 2020), SASRec row, Beauty"}
OUTSIDE_REFERENCE = {
    "full_HR@10": 0.0476,
    "full_NDCG@10": 0.0247,
    "HR@1": 0.347,
    "HR@5": 0.638,
    "NDCG@5": 0.499,
    "source": "pmixer/SASRec.pytorch, 80 epochs, hidden 50, run on the project's CPU",
}


@dataclass
class SASRecBeautyArguments:
    """The flags of `python -m benchmarks.sasrec_beauty` (a SASRec budget of its own, hence its own names)."""

    data_dir: Path = field(default=REPO.parent / "shared" / "data" / "beauty", metadata={"help": "holds Beauty.txt"})
    output: Path = field(default=REPO / "benchmarks" / "results" / "sasrec_beauty.json", metadata={"help": "report"})
    export: Path | None = field(default=None, metadata={"help": "folder for the model and id features"})
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 1
    max_len: int = 50
    dropout: float = 0.5
    loss: str = field(default="sampled", metadata={"choices": ["ce", "sampled", "bce"]})
    num_negatives: int = field(default=512, metadata={"help": "negatives per batch of the sampled loss"})
    num_epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 1e-3
    eval_every: int = 5
    patience: int = 6
    seed: int = 0
    device: str | None = None
    max_users: int | None = field(default=None, metadata={"help": "quick check on the first N users (not comparable)"})


def main(argv: Sequence[str] | None = None) -> None:
    args, _ = parse_arguments(SASRecBeautyArguments, argv, __doc__.split("\n\n")[0])

    job_start = time.perf_counter()
    sequence_file = args.data_dir / "Beauty.txt"
    if not sequence_file.is_file():
        sys.exit(f"{sequence_file} not found: pass --data_dir pointing at shared/data/beauty.")
    rec = load_s3rec(sequence_file, name="Beauty")
    if args.max_users:
        rec.sequences = rec.sequences.select(range(args.max_users))
    # The candidates depend on (seed, user) only, so both splits hold the same candidates for every user.
    split_50 = make_split(rec, num_candidates=20, seed=args.seed, max_history_len=args.max_len)
    split_20 = make_split(rec, num_candidates=20, seed=args.seed, max_history_len=20)
    assert split_50["test"]["candidates"][:] == split_20["test"]["candidates"][:]
    train = training_sequences(rec)

    start = time.perf_counter()
    result = train_sasrec(
        train,
        rec.num_items,
        split_50["validation"],
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        max_len=args.max_len,
        dropout=args.dropout,
        loss=args.loss,
        num_negatives=args.num_negatives,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
    )
    train_seconds = time.perf_counter() - start
    test_50 = evaluate_sasrec(result.model, split_50["test"])
    test_20 = evaluate_sasrec(result.model, split_20["test"], full_ranking=False)
    validation = evaluate_sasrec(result.model, split_50["validation"], candidates=False)

    report = {
        "command": command_line(__spec__.name, argv),
        "dataset": {"name": "Amazon Beauty 2014 5-core (S3Rec Beauty.txt)", **rec.statistics()},
        "protocol": {
            "split": "leave-one-out (last item test, second last validation)",
            "test_users": len(split_50["test"]),
            "full_ranking": "all items except those in the user's history (up to max_len items)",
            "candidates": "20 = target + 19 uniform negatives the user never interacted with, fixed by seed",
            "seed": args.seed,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_description(),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - job_start, 1),
        "best_epoch": result.best_epoch,
        # The headline figures, on all test users: full ranking over history 50, candidates over history 20 (the
        # history Speeder reads by default).
        "full_ranking": {k: test_50[f"full_{k}"] for k in ("HR@10", "NDCG@10")},
        "candidates_20": {k: test_20[k] for k in ("HR@1", "HR@5", "NDCG@5")},
        "vs_published": {k: round(test_50[k] / PUBLISHED[k], 2) for k in ("full_HR@10", "full_NDCG@10")},
        "test_history_50": test_50,
        "test_history_20_candidates": test_20,
        "validation_full": validation,
        "published_sasrec": PUBLISHED,
        "outside_sasrec_reference": OUTSIDE_REFERENCE,
        "log": result.log,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {k: report[k] for k in ("wall_seconds", "best_epoch", "full_ranking", "candidates_20", "vs_published")},
            indent=2,
        )
    )

    if args.export:
        result.model.save_pretrained(args.export)
        values, present = sasrec_item_features(result.model, train)
        save_file(
            {"features": values, "present": present.astype(np.bool_)}, str(args.export / "id_features.safetensors")
        )


if __name__ == "__main__":
    main()
