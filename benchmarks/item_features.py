"""Item feature extraction on real data: coverage, time, and the on-disk cache.

Builds an `ItemCatalog` for a named dataset with the default offline encoders (all-MiniLM-L6-v2 text,
EfficientNet-Lite0 images), then builds it again to time the cache, and writes a JSON report.

    python -m benchmarks.item_features --dataset movielens --output benchmarks/results/item_features_movielens.json
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speeder_hf.catalog.encoders import ImageEncoder, TextEncoder, encode_image_modality, encode_text_modality
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.data import load_dataset_by_name
from speeder_hf_train.arguments import job_field

from .arguments import parse_arguments
from .bookkeeping import command_line


def build(rec, modalities: list[str], cache_dir: Path, encoders: dict) -> tuple[ItemCatalog, dict[str, float]]:
    catalog = ItemCatalog.from_dataset(rec)
    seconds = {}
    for modality in modalities:
        start = time.perf_counter()
        if modality == "text":
            encode_text_modality(catalog, encoders["text"], cache_dir)
        else:
            encode_image_modality(catalog, encoders["image"], cache_dir)
        seconds[modality] = time.perf_counter() - start
    return catalog, seconds


@dataclass
class ItemFeaturesArguments:
    """The flags of `python -m benchmarks.item_features`."""

    output: Path = field(metadata={"help": "the JSON report"})
    dataset: str = job_field("dataset", default="movielens")
    modalities: str = field(default="text,image", metadata={"help": "comma-separated: text, image"})


def main(argv: Sequence[str] | None = None) -> None:
    args, _ = parse_arguments(ItemFeaturesArguments, argv, __doc__.split("\n\n")[0])

    rec = load_dataset_by_name(args.dataset)
    modalities = [m for m in args.modalities.split(",") if m]
    encoders = {}
    if "text" in modalities:
        encoders["text"] = TextEncoder(device="cpu")
    if "image" in modalities:
        encoders["image"] = ImageEncoder(device="cpu")
    with tempfile.TemporaryDirectory() as cache:
        catalog, first = build(rec, modalities, Path(cache), encoders)
        again, cached = build(rec, modalities, Path(cache), encoders)
    report = {
        "command": command_line(__spec__.name, argv),
        "dataset": args.dataset,
        "items": len(catalog),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads (shared 2-core machine)",
        "modalities": {},
    }
    for m in modalities:
        assert np.array_equal(again.features[m], catalog.features[m])
        present = int(catalog.presence[m].sum())
        report["modalities"][m] = {
            "encoder": catalog.sources[m]["encoder"],
            "dim": catalog.features[m].shape[1],
            "items_present": present,
            "seconds": round(first[m], 1),
            "items_per_second": round(present / first[m], 1),
            "cached_seconds": round(cached[m], 2),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
