"""Builds the prepared data folders the benchmarks read (`--catalog_dir`), on CPU, once: the datasets, their frozen
text/image features, the SASRec `id` features (and model) and, for the `mllm` baseline, per-cell image feature
maps. The GPU run then needs neither the encoders' weights nor the raw files.

- Beauty (Amazon 2014 5-core, shipped in the package: speeder_hf/data/amazon-beauty) and Sports_and_Outdoors
  (`--data_root`/sports): text (all-MiniLM-L6-v2 over title + categories + keywords) and id (SASRec). No images exist
  for them.
- MovieLens-100K (`--data_root`/llara_movielens, posters from `--data_root`/movielens_posters): text (title +
  genres), image (EfficientNet-Lite0, pooled 1280-d), id (SASRec) and the 7x7 EfficientNet-Lite0 feature map of each
  poster (49 image tokens per item), its 1280 channels reduced by PCA to `--spatial_channels` to keep the folder small
  (the number of image tokens, which sets the mllm baseline's cost, is unchanged). Skipped cleanly when the files
  are absent.

Features are stored as float16. The folder is derived data: keep it out of git (outputs/ is ignored), and never
publish the MovieLens part (GroupLens and poster terms forbid redistribution).

    python -m benchmarks.prepare_catalogs --out outputs/bench_catalogs \\
        --sasrec_from beauty=/path/to/sasrec_beauty_export      # optional: reuse a trained SASRec
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.baselines import spatial_image_features
from speeder_hf.catalog.encoders import ImageEncoder, TextEncoder, encode_image_modality, encode_text_modality
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec, evaluate_sasrec, sasrec_item_features, train_sasrec
from speeder_hf.data import RecDataset, load_dataset_by_name, make_split, training_sequences
from speeder_hf_train.arguments import SASRecArguments, job_field

from .arguments import parse_arguments, split_commas
from .bench_data import BenchData, save_bench_data
from .bookkeeping import REPO, setup_logging

logger = logging.getLogger("benchmarks.prepare")


@dataclass
class PrepareArguments(SASRecArguments):
    """The flags of `python -m benchmarks.prepare_catalogs`: the job's SASRec group, at a budget of its own (these
    catalogs are made once), and the job's other knobs it takes (`job_field`)."""

    out: Path = field(default=REPO / "outputs" / "bench_catalogs", metadata={"help": "folder of the prepared data"})
    data_root: Path = field(default=REPO.parent / "shared" / "data", metadata={"help": "shared/data"})
    datasets: list[str] = field(
        default_factory=lambda: ["beauty", "movielens", "sports"], metadata={"help": "datasets"}
    )
    text_max_length: int = job_field("text_max_length")
    spatial_channels: int = field(default=128, metadata={"help": "PCA size of the feature-map channels"})
    spatial_grid: int | None = field(default=None, metadata={"help": "pool the 7x7 map to NxN cells (fewer tokens)"})
    sasrec_from: list[str] = field(
        default_factory=list,
        metadata={
            "help": "DATASET=DIR ...: reuse a SASRec saved with save_pretrained (trained on the same leave-one-out "
            "training sequences)"
        },
    )
    sasrec_epochs: int = job_field("sasrec_epochs", default=200)
    sasrec_loss: str = job_field("sasrec_loss", default="ce")
    sasrec_max_len: int = job_field("sasrec_max_len", default=50)
    sasrec_patience: int = field(default=6, metadata={"help": "evaluations (every 5 epochs) without gain"})
    cache_dir: Path | None = job_field("cache_dir")
    threads: int = field(default=1, metadata={"help": "torch threads (spinning threads stall a busy machine)"})
    seed: int = job_field("seed")

    def __post_init__(self) -> None:
        self.datasets = split_commas(self.datasets)
        malformed = [item for item in self.sasrec_from if "=" not in item]
        if malformed:
            raise ValueError(f"--sasrec_from takes DATASET=DIR, got {malformed[0]!r}")

    @property
    def sasrec_folders(self) -> dict[str, str]:
        """`--sasrec_from` as `{dataset: folder}`."""
        return dict(item.split("=", 1) for item in self.sasrec_from)


def parse_args(argv: list[str] | None = None) -> PrepareArguments:
    return parse_arguments(PrepareArguments, argv, __doc__.split("\n\n")[0])[0]


def sasrec_for(name: str, rec: RecDataset, args: PrepareArguments, holdout: int = 0) -> tuple[SASRec, dict]:
    """A SASRec trained on the training sequences (without each user's last `holdout` training items) with early
    stopping on validation NDCG@10 (full ranking), or the full one reused from `--sasrec_from`."""
    split = make_split(rec, num_candidates=20, seed=args.seed)
    if name in args.sasrec_folders and not holdout:
        model = SASRec.from_pretrained(args.sasrec_folders[name]).eval()
        if model.num_items != rec.num_items:
            raise ValueError(
                f"{args.sasrec_folders[name]}: SASRec of {model.num_items} items, dataset has {rec.num_items}."
            )
        source = {"trained": f"reused from {args.sasrec_folders[name]}"}
    else:
        start = time.perf_counter()
        result = train_sasrec(
            training_sequences(rec, seed=args.seed, holdout=holdout),
            rec.num_items,
            split["validation"],
            max_len=args.sasrec_max_len,
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


def prepare(name: str, rec: RecDataset, args: PrepareArguments) -> BenchData:
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
