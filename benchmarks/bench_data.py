"""The prepared data folders the benchmarks read (`benchmarks.prepare_catalogs` writes them).

A prepared data folder `<catalog_dir>/<dataset>/` holds:

- `rec/`: the `RecDataset` (Arrow), so the split is rebuilt identically anywhere (`make_split` is seeded);
- `features.safetensors`: float16 `features.<modality>` `(N, d)` and bool `presence.<modality>` `(N,)` for the
  catalog modalities (text, image, id), and for the `mllm` baseline `spatial` `(N, K, C)` with `spatial_presence`;
- `features.json`: how each modality was made (encoder, SASRec run, spatial pooling and channel reduction);
- `sasrec/`: the SASRec trained on every training sequence: the SASRec baseline and the prior at evaluation;
- `sasrec_held_out/`: the SASRec trained without each user's last training item (the samples the LLM methods train
  on), whose item embeddings are the `id` modality and whose scores are the prior during training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec
from speeder_hf.data import RecDataset
from speeder_hf.model.collaborative_prior import CollaborativePrior
from speeder_hf.model.configuration_speeder import SpeederConfig
from speeder_hf.model.content_prior import ContentPrior, default_modalities
from speeder_hf.model.item_features import ItemFeatureTable
from speeder_hf.training.prior_calibration import PriorFusion

from .bookkeeping import REPO

DEFAULT_CATALOG_DIR = REPO / "outputs" / "bench_catalogs"
FEATURES_FILE = "features.safetensors"
FEATURES_JSON = "features.json"


SASREC_FOLDER, HELD_OUT_FOLDER = "sasrec", "sasrec_held_out"


@dataclass
class BenchData:
    """One dataset ready for the benchmarks.

    Attributes:
        name: dataset name (a key of the result files).
        rec: the interactions and item metadata.
        catalog: titles, texts and modality features (rows = `rec` item rows). Items without a title get
            `"Item <item_id>"`, because the titled styles write and parse every candidate's title.
        spatial: `(N, K, C)` per-cell image features for the `mllm` style, or None.
        sasrec: the SASRec trained on every training sequence (the baseline, and the collaborative prior at
            evaluation), or None.
        held_out_sasrec: the SASRec trained without each user's last training item, which the LLM methods train
            on: the `id` modality's model and the prior during training (see `speeder_hf_train.finetune.build_catalog`).
        info: provenance (features.json), plus `untitled_items`.
    """

    name: str
    rec: RecDataset
    catalog: ItemCatalog
    spatial: np.ndarray | None = None
    sasrec: SASRec | None = None
    info: dict[str, Any] = field(default_factory=dict)
    held_out_sasrec: SASRec | None = None

    @property
    def has_images(self) -> bool:
        return self.spatial is not None

    def priors(self, modalities: Sequence[str] | None = None) -> PriorFusion:
        """The priors Speeder's recipe adds after training, outside a model: the prepared SASRec and the content
        prior over `modalities` (default: the catalog's, but id), their weights unfitted."""
        table_modalities = list(self.catalog.modalities)
        config = SpeederConfig(modalities=table_modalities, modality_dims=self.catalog.modality_dims(table_modalities))
        table = ItemFeatureTable(config)
        table.set(*self.catalog.feature_tensors(table_modalities))
        modalities = default_modalities(table_modalities) if modalities is None else list(modalities)
        content = ContentPrior(modalities, table_modalities) if modalities else None
        return PriorFusion(CollaborativePrior.from_sasrec(self.sasrec), content, table)


def save_bench_data(directory: Path, data: BenchData) -> int:
    """Writes `data` as a prepared folder (see the module docstring); returns its size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    data.rec.save(directory / "rec")
    tensors: dict[str, np.ndarray] = {}
    for modality in data.catalog.modalities:
        tensors[f"features.{modality}"] = data.catalog.features[modality].astype(np.float16)
        tensors[f"presence.{modality}"] = data.catalog.presence[modality]
    if data.spatial is not None:
        tensors["spatial"] = data.spatial.astype(np.float16)
    save_file(tensors, str(directory / FEATURES_FILE))
    info = {**data.info, "modalities": data.catalog.modalities, "sources": data.catalog.sources}
    (directory / FEATURES_JSON).write_text(json.dumps(info, indent=2))
    for folder, model in ((SASREC_FOLDER, data.sasrec), (HELD_OUT_FOLDER, data.held_out_sasrec)):
        if model is not None:
            model.save_pretrained(directory / folder)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def load_bench_data(directory: Path, name: str | None = None) -> BenchData:
    """Reads a prepared folder written by `save_bench_data`.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (run `python -m benchmarks.prepare_catalogs`).
    """
    if not (directory / FEATURES_JSON).is_file():
        raise FileNotFoundError(
            f"{directory} is not a prepared data folder (no {FEATURES_JSON}); build it with "
            "`python -m benchmarks.prepare_catalogs --out <catalog_dir>`."
        )
    rec = RecDataset.load(directory / "rec")
    info = json.loads((directory / FEATURES_JSON).read_text())
    tensors = load_file(str(directory / FEATURES_FILE))
    catalog = ItemCatalog.from_dataset(rec)
    for modality in info["modalities"]:
        catalog.add_features(
            modality,
            tensors[f"features.{modality}"].astype(np.float32),
            tensors[f"presence.{modality}"],
            info["sources"].get(modality),
        )
    untitled = [row for row, title in enumerate(catalog.titles) if not (title and title.strip())]
    for row in untitled:
        # The S3Rec number, not the ASIN: the committed results' title prompts were written with it.
        catalog.titles[row] = f"Item {row + 1}"
    spatial = tensors["spatial"].astype(np.float32) if "spatial" in tensors else None
    sasrec, held_out = (_load_sasrec(directory / folder, rec.num_items) for folder in (SASREC_FOLDER, HELD_OUT_FOLDER))
    info["untitled_items"] = len(untitled)
    return BenchData(name or directory.name, rec, catalog, spatial, sasrec, info, held_out)


def _load_sasrec(folder: Path, num_items: int) -> SASRec | None:
    if not folder.is_dir():
        return None
    model = SASRec.from_pretrained(str(folder))
    if model.num_items != num_items:
        raise ValueError(f"{folder} has {model.num_items} items but the dataset has {num_items}.")
    return model.eval()
