"""Two-stage recommendation as full-catalog ranking: SASRec retrieves its top K items (history excluded) and a saved
Speeder model reranks them; the target's rank over the whole catalog is its rank in the reranked list when SASRec
retrieved it, else a miss. Compared, on the same test users, with SASRec's own full ranking (the retriever alone).

    python -m benchmarks.two_stage --model_dir outputs/speeder-beauty --dataset beauty --max_users 2000

Writes `<out>/two_stage.json` (`{dataset: {n_users, sasrec, two_stage, retriever_recall, command, ...}}`), keeping
other datasets' entries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from speeder_hf.catalog.sasrec import sasrec_ranks
from speeder_hf.data import load_dataset_by_name, make_split
from speeder_hf.json_files import write_json
from speeder_hf.metrics import rank_metrics
from speeder_hf.serving.bundle import load_pretrained_bundle
from speeder_hf.serving.recommend import Recommender, Request, SASRecRetriever
from speeder_hf_train.arguments import job_field

from .arguments import parse_arguments
from .bookkeeping import RESULTS_DIR, command_line, machine_description, setup_logging, today


@dataclass
class TwoStageArguments:
    """The flags of `python -m benchmarks.two_stage`."""

    model_dir: Path = field(metadata={"help": "a bundle saved by the main job (with sasrec/)"})
    dataset: str = job_field("dataset")
    max_users: int = field(default=2000, metadata={"help": "seeded subset of the test users"})
    retrieve: int | None = field(default=None, metadata={"help": "items retrieved (default: the model's candidates)"})
    batch_size: int = field(default=32, metadata={"help": "requests reranked per forward pass"})
    seed: int = job_field("seed")
    out: Path = field(default=RESULTS_DIR, metadata={"help": "folder for two_stage.json"})


def parse_args(argv: list[str] | None = None) -> TwoStageArguments:
    return parse_arguments(TwoStageArguments, argv, __doc__.split("\n\n")[0])[0]


@torch.no_grad()
def rerank_ranks(recommender: Recommender, rows, retrieved: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per row, the target's 0-based position in the pipeline's order of the retrieved items (scored as
    `Recommender.score` scores retrieved candidates), or the catalog size when SASRec did not retrieve it (a miss at
    every cut-off)."""
    ranks = []
    for begin in tqdm(range(0, len(rows), batch_size), desc="Reranking"):
        chunk = rows[begin : begin + batch_size]
        items = retrieved[begin : begin + batch_size]  # (B, K)
        requests = [Request(list(r["history"]), c.tolist(), retrieved=True) for r, c in zip(chunk, items)]
        scores = torch.stack(recommender.score(requests, batch_size))  # (B, K) in retrieved order
        order = items.gather(1, scores.argsort(dim=1, descending=True, stable=True))  # (B, K) items, best first
        target = torch.tensor([r["target"] for r in chunk])[:, None]
        found = order == target
        missed = torch.full((len(chunk),), len(recommender.catalog))
        ranks.append(torch.where(found.any(1), found.int().argmax(1), missed).numpy())
    return np.concatenate(ranks)


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    args = parse_args(argv)
    start = time.perf_counter()
    model, tokenizer, catalog, sasrec = load_pretrained_bundle(str(args.model_dir))
    if sasrec is None:
        raise FileNotFoundError(f"{args.model_dir} has no sasrec/ folder: the two-stage mode needs the retriever.")
    model.eval()
    rec = load_dataset_by_name(args.dataset)
    split = make_split(rec, num_candidates=None, seed=args.seed, max_history_len=model.config.max_history_len)
    test = split["test"]
    if len(test) > args.max_users:
        test = test.select(np.sort(np.random.default_rng(args.seed).permutation(len(test))[: args.max_users]).tolist())
    rows = list(test)
    k = args.retrieve or model.config.num_candidates

    _, sasrec_full = sasrec_ranks(sasrec, test, candidates=False, progress=False)  # (N,) over the catalog
    retrieved = torch.tensor(SASRecRetriever(sasrec).retrieve([r["history"] for r in rows], k))  # (N, K)
    recommender = Recommender(model, tokenizer, catalog, SASRecRetriever(sasrec))
    reranked = rerank_ranks(recommender, rows, retrieved, args.batch_size)

    def summary(ranks: np.ndarray) -> dict:
        values = rank_metrics(ranks, ks=(1, 5, 10))
        return {key: round(values[key], 5) for key in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")}

    entry = {
        "n_users": len(rows),
        "retrieved": k,
        "retriever_recall": round(float((sasrec_full < k).mean()), 5),
        "sasrec": summary(sasrec_full),
        "two_stage": summary(reranked),
        "retrieved_fusion": model.config.retrieved_fusion,
        "protocol": f"leave-one-out test users (seeded subset of {args.max_users}); the target ranked over all "
        f"{rec.num_items} items minus the history; two_stage: Speeder reranks SASRec's top {k}",
        "model_dir": str(args.model_dir),
        "command": command_line(__spec__.name, argv),
        "machine": machine_description(),
        "date": today(),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    path = args.out / "two_stage.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.dataset] = entry
    write_json(path, results)
    print(json.dumps({key: entry[key] for key in ("n_users", "retriever_recall", "sasrec", "two_stage")}, indent=2))
    return results


if __name__ == "__main__":
    main()
