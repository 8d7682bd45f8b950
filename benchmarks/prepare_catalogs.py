"""Builds the prepared data folders the benchmarks read (`--catalog-dir`), on CPU, once: the datasets, their frozen
text/image features, the SASRec `id` features (and model) and, for the `mllm` baseline, per-cell image feature
maps. The GPU run then needs neither the encoders' weights nor the raw files.

- Beauty (Amazon 2014 5-core, shipped in the package: speeder_hf/data/amazon-beauty) and Sports_and_Outdoors
  (`--data-root`/sports): text (all-MiniLM-L6-v2 over title + categories + keywords) and id (SASRec). No images exist
  for them.
- MovieLens-100K (`--data-root`/llara_movielens, posters from `--data-root`/movielens_posters): text (title +
  genres), image (EfficientNet-Lite0, pooled 1280-d), id (SASRec) and the 7x7 EfficientNet-Lite0 feature map of each
  poster (49 image tokens per item), its 1280 channels reduced by PCA to `--spatial-channels` to keep the folder small
  (the number of image tokens, which sets the mllm baseline's cost, is unchanged). Skipped cleanly when the files
  are absent.

Features are stored as float16. The folder is derived data: keep it out of git (outputs/ is ignored), and never
publish the MovieLens part (GroupLens and poster terms forbid redistribution).

    python benchmarks/prepare_catalogs.py --out outputs/bench_catalogs \\
        --sasrec-from beauty=/path/to/sasrec_beauty_export      # optional: reuse a trained SASRec
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, BenchData, save_bench_data, setup_logging  # noqa: E402

from speeder_hf.baselines import spatial_image_features  # noqa: E402
from speeder_hf.catalog import ItemCatalog  # noqa: E402
from speeder_hf.data import RecDataset, load_dataset_by_name, make_split, training_sequences  # noqa: E402
from speeder_hf.encoders import ImageEncoder, TextEncoder, encode_image_modality, encode_text_modality  # noqa: E402
from speeder_hf.sasrec import SASRec, evaluate_sasrec, sasrec_item_features, train_sasrec  # noqa: E402

logger = logging.getLogger("benchmarks.prepare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_catalogs")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="shared/data")
    parser.add_argument("--datasets", default="beauty,movielens,sports")
    parser.add_argument("--text-max-length", type=int, default=32, help="text-encoder tokens per item")
    parser.add_argument("--spatial-channels", type=int, default=128, help="PCA size of the feature-map channels")
    parser.add_argument("--spatial-grid", type=int, default=None, help="pool the 7x7 map to NxN cells (fewer tokens)")
    parser.add_argument(
        "--sasrec-from",
        action="append",
        default=[],
        metavar="DATASET=DIR",
        help="reuse a SASRec saved with save_pretrained (trained on the same leave-one-out training sequences)",
    )
    parser.add_argument("--sasrec-epochs", type=int, default=200)
    parser.add_argument("--sasrec-dropout", type=float, default=0.5)
    parser.add_argument("--sasrec-loss", default="ce", help="ce (full softmax), sampled or bce")
    parser.add_argument("--sasrec-patience", type=int, default=6, help="evaluations (every 5 epochs) without gain")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/speeder_hf)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (spinning threads stall a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.sasrec_from = dict(item.split("=", 1) for item in args.sasrec_from)
    return args


def sasrec_for(name: str, rec: RecDataset, args: argparse.Namespace, holdout: int = 0) -> tuple[SASRec, dict]:
    """A SASRec trained on the training sequences (without each user's last `holdout` training items) with early
    stopping on validation NDCG@10 (full ranking), or the full one reused from `--sasrec-from`."""
    split = make_split(rec, num_candidates=20, seed=args.seed)
    if name in args.sasrec_from and not holdout:
        model = SASRec.from_pretrained(args.sasrec_from[name]).eval()
        if model.num_items != rec.num_items:
            raise ValueError(
                f"{args.sasrec_from[name]}: SASRec of {model.num_items} items, dataset has {rec.num_items}."
            )
        source = {"trained": f"reused from {args.sasrec_from[name]}"}
    else:
        start = time.perf_counter()
        result = train_sasrec(
            training_sequences(rec, seed=args.seed, holdout=holdout),
            rec.num_items,
            split["validation"],
            dropout=args.sasrec_dropout,
            num_epochs=args.sasrec_epochs,
            loss=args.sasrec_loss,
            patience=args.sasrec_patience,
            seed=args.seed,
        )
        model = result.model
        source = {
            "trained": "here, on the leave-one-out training sequences"
            + (f" without each user's last {holdout} training item(s)" if holdout else ""),
            "loss": args.sasrec_loss,
            "best_epoch": result.best_epoch,
            "train_seconds": round(time.perf_counter() - start, 1),
        }
    validation = evaluate_sasrec(model, split["validation"], ks=(1, 10), progress=False)
    source.update(
        {
            "hidden_size": model.item_embedding.embedding_dim,
            "max_len": model.max_len,
            "validation_HR@1_20_candidates": round(validation["HR@1"], 4),
            "validation_full_NDCG@10": round(validation["full_NDCG@10"], 4),
        }
    )
    logger.info("%s SASRec (holdout %d): %s", name, holdout, source)
    return model, source


def reduce_channels(features: np.ndarray, present: np.ndarray, channels: int, seed: int) -> tuple[np.ndarray, dict]:
    """PCA of the map cells' channels (fit on the cells of items with an image) to `channels` components;
    absent items stay all-zero."""
    cells = features[present].reshape(-1, features.shape[-1]).astype(np.float64)  # (n_present * K, C)
    mean = cells.mean(0)
    rng = np.random.default_rng(seed)
    sample = cells[rng.permutation(len(cells))[: min(len(cells), 50_000)]] - mean
    _, singular, components = np.linalg.svd(sample, full_matrices=False)
    explained = float((singular[:channels] ** 2).sum() / (singular**2).sum())
    reduced = np.zeros((*features.shape[:2], channels), dtype=np.float32)
    reduced[present] = ((features[present] - mean) @ components[:channels].T).astype(np.float32)
    return reduced, {"pca_components": channels, "pca_explained_variance": round(explained, 4)}


def prepare(name: str, rec: RecDataset, args: argparse.Namespace) -> BenchData:
    catalog = ItemCatalog.from_dataset(rec)
    encode_text_modality(catalog, TextEncoder(max_length=args.text_max_length), args.cache_dir)
    info: dict = {"dataset": rec.statistics()}
    spatial = None
    if any(catalog.image_paths):
        encoder = ImageEncoder()
        encode_image_modality(catalog, encoder, args.cache_dir)
        maps, present = spatial_image_features(encoder, catalog.image_paths, grid=args.spatial_grid)
        info["spatial"] = {
            "encoder": encoder.name,
            "map": f"{int(np.sqrt(maps.shape[1]))}x{int(np.sqrt(maps.shape[1]))} cells x {maps.shape[2]} channels",
            "image_tokens_per_item": maps.shape[1],
            "items_with_image": int(present.sum()),
            "items_without_image": "all-zero map (the projector's bias)",
        }
        if args.spatial_channels < maps.shape[2]:
            maps, reduction = reduce_channels(maps, present, args.spatial_channels, args.seed)
            info["spatial"]["channel_reduction"] = reduction
        spatial = maps
    sasrec, info["sasrec"] = sasrec_for(name, rec, args)
    held_out, source = sasrec_for(name, rec, args, holdout=1)
    features, present = sasrec_item_features(held_out, training_sequences(rec, seed=args.seed, holdout=1))
    catalog.add_features("id", features, present, {"encoder": "sasrec", "held_out_last_training_item": True, **source})
    return BenchData(name, rec, catalog, spatial, sasrec, info, held_out)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.environ["SPEEDER_HF_DATA"] = str(args.data_root)
    total = 0
    for name in args.datasets:
        try:
            rec = load_dataset_by_name(name)
        except FileNotFoundError as error:
            logger.warning("%s skipped: %s", name, error)
            continue
        data = prepare(name, rec, args)
        size = save_bench_data(args.out / name, data)
        total += size
        logger.info("%s: %s written, %.1f MiB", name, args.out / name, size / 2**20)
    logger.info("all prepared data: %.1f MiB in %s", total / 2**20, args.out)


if __name__ == "__main__":
    main()
