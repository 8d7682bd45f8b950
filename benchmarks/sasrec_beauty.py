"""SASRec on Amazon Beauty (leave-one-out), the collaborative baseline and the source of the `id` modality.

Measures, on the test users:
- full ranking over all items except the user's history (the S3Rec/SASRec protocol; published SASRec on this data:
  HR@10 0.0605, NDCG@10 0.0318);
- the 20-candidate protocol Speeder is evaluated on (1 target + 19 uniform negatives outside the user's items,
  fixed by the split seed), with histories cut to 20 (Speeder's default) and 50 items.

Writes a JSON report (metrics, training log, settings, machine, command) and optionally the trained model and its
item-embedding features (`--export`), for `ItemCatalog.add_features("id", ...)`.

    python benchmarks/sasrec_beauty.py   # CPU default: sampled softmax, 40 epochs, about 10 minutes on 2 cores

The defaults fit a 2-core CPU in under 15 minutes; on a GPU, `--loss ce --num-epochs 200` (early stopping) gives the
full-softmax model (`benchmarks/results/sasrec_beauty_h200_ce.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from speeder_hf.data import load_s3rec, make_split, training_sequences
from speeder_hf.sasrec import evaluate_sasrec, sasrec_item_features, train_sasrec

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "beauty")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "sasrec_beauty.json")
    parser.add_argument("--export", type=Path, default=None, help="folder for the model and id features")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--loss", default="sampled", choices=["ce", "sampled", "bce"])
    parser.add_argument("--num-negatives", type=int, default=512, help="negatives per batch of the sampled loss")
    parser.add_argument("--num-epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-users", type=int, default=None, help="quick check on the first N users (not comparable)")
    args = parser.parse_args()

    job_start = time.perf_counter()
    sequence_file = args.data_dir / "Beauty.txt"
    if not sequence_file.is_file():
        sys.exit(f"{sequence_file} not found: pass --data-dir pointing at shared/data/beauty.")
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

    device = next(result.model.parameters()).device
    report = {
        "command": "python " + " ".join(sys.argv),
        "dataset": {"name": "Amazon Beauty 2014 5-core (S3Rec Beauty.txt)", **rec.statistics()},
        "protocol": {
            "split": "leave-one-out (last item test, second last validation)",
            "test_users": len(split_50["test"]),
            "full_ranking": "all items except those in the user's history (up to max_len items)",
            "candidates": "20 = target + 19 uniform negatives the user never interacted with, fixed by seed",
            "seed": args.seed,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "platform": platform.platform(),
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
        },
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
