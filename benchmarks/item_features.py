"""Item feature extraction on real data: coverage, time, and the on-disk cache.

Builds an `ItemCatalog` for a named dataset with the default offline encoders (all-MiniLM-L6-v2 text,
EfficientNet-Lite0 images), then builds it again to time the cache, and writes a JSON report.

    python benchmarks/item_features.py --dataset movielens --output benchmarks/results/item_features_movielens.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speeder_hf.catalog import ItemCatalog
from speeder_hf.data import load_dataset_by_name
from speeder_hf.encoders import ImageEncoder, TextEncoder, encode_image_modality, encode_text_modality


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="movielens")
    parser.add_argument("--modalities", default="text,image")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

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
        "command": "python " + " ".join(sys.argv),
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
