"""`ItemCatalog`: per item, its id, title, text, image path and one feature vector per modality with a
presence mask; saved as JSON + safetensors (never pickle) and installed into a model as its feature table. The ids,
titles and lookup by id or title are its base class, `speeder_hf.catalog.item_index.ItemIndex`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data.rec_dataset import RecDataset
from .item_index import CATALOG_JSON, CATALOG_TENSORS, ItemIndex


class ItemCatalog(ItemIndex):
    """The item side of a recommender: metadata and modality features, indexed by internal item index.

    Args:
        item_ids: external ids; position = internal index (the row used by the model's feature table).
        titles, texts, image_paths: per-item metadata (None where unknown).

    Attributes:
        features: `{modality: float32 array (N, d)}`; rows of absent items are zeros.
        presence: `{modality: bool array (N,)}`; False where an item lacks the modality (no image, say).
        sources: `{modality: dict}` describing how each modality was made (encoder, fingerprint, ...).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        titles: Sequence[str | None] | None = None,
        texts: Sequence[str | None] | None = None,
        image_paths: Sequence[str | None] | None = None,
    ):
        super().__init__(item_ids, titles, texts, image_paths)
        self.features: dict[str, np.ndarray] = {}
        self.presence: dict[str, np.ndarray] = {}
        self.sources: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_dataset(cls, rec: RecDataset) -> ItemCatalog:
        """A catalog with the items of `rec` (same internal indices) and no features yet."""
        columns = rec.items.to_dict()
        return cls(columns["item_id"], columns["title"], columns["text"], columns["image_path"])

    @property
    def modalities(self) -> list[str]:
        """Modalities with features, in the order they were added."""
        return list(self.features)

    # ----- features -------------------------------------------------------------------------------------------
    def add_features(
        self,
        modality: str,
        values: np.ndarray | torch.Tensor,
        present: np.ndarray | torch.Tensor | Sequence[bool] | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        """Sets the `(N, d)` features of `modality` (replacing any earlier ones).

        Args:
            present: `(N,)` bool; rows marked absent are stored as zeros whatever `values` holds there.
                Defaults to all present.
            source: JSON-serialisable description (encoder name, fingerprint, ...), saved with the catalog.

        Raises:
            ValueError: wrong shape, or NaN/inf in a present row (the message names the first such items).
        """
        values = np.array(
            values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float32
        )
        n = len(self)
        if values.ndim != 2 or values.shape[0] != n:
            raise ValueError(f"Features of modality {modality!r} must be (num_items={n}, d), got {values.shape}.")
        if isinstance(present, torch.Tensor):
            present = present.detach().cpu().numpy()
        present = np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        if present.shape != (n,):
            raise ValueError(f"Presence of modality {modality!r} must be ({n},), got {present.shape}.")
        bad = np.flatnonzero(present & ~np.isfinite(values).all(axis=1))
        if bad.size:
            ids = [self.item_ids[row] for row in bad[:5]]
            raise ValueError(
                f"Features of modality {modality!r} contain NaN or inf for items {ids} (rows {bad[:5].tolist()})."
            )
        values[~present] = 0.0
        self.features[modality] = values
        self.presence[modality] = present
        self.sources[modality] = dict(source or {})

    def feature_tensors(self, modalities: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Tensors for `SpeederForSequentialRec.set_item_features`: `{m: FloatTensor (N, d_m)}` and a
        `(N, M)` BoolTensor presence mask in the order of `modalities`.

        Raises:
            KeyError: a requested modality has no features in this catalog.
        """
        missing = [m for m in modalities if m not in self.features]
        if missing:
            raise KeyError(f"The catalog has no {missing} features (it has {self.modalities}).")
        features = {m: torch.from_numpy(self.features[m]) for m in modalities}
        presence = torch.from_numpy(np.stack([self.presence[m] for m in modalities], axis=1))  # (N, M)
        return features, presence

    def modality_dims(self, modalities: Sequence[str] | None = None) -> list[int]:
        """Feature sizes, for `SpeederConfig(modality_dims=...)`."""
        return [self.features[m].shape[1] for m in (modalities or self.modalities)]

    # ----- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Writes `item_catalog.json` (ids, metadata, modality order, sources) and `item_catalog.safetensors`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "item_ids": self.item_ids,
            "titles": self.titles,
            "texts": self.texts,
            "image_paths": self.image_paths,
            "modalities": self.modalities,
            "sources": self.sources,
        }
        (directory / CATALOG_JSON).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        tensors = {f"features.{m}": self.features[m] for m in self.modalities}
        tensors.update({f"presence.{m}": self.presence[m] for m in self.modalities})
        save_file(tensors, str(directory / CATALOG_TENSORS), metadata={"format": "speeder_hf.ItemCatalog"})

    @classmethod
    def load(cls, directory: str | Path) -> ItemCatalog:
        """Reads a catalog written by `save`."""
        directory = Path(directory)
        meta = cls.read_meta(directory)
        catalog = cls(meta["item_ids"], meta["titles"], meta["texts"], meta["image_paths"])
        tensors = load_file(str(directory / CATALOG_TENSORS)) if meta["modalities"] else {}
        for modality in meta["modalities"]:
            catalog.add_features(
                modality, tensors[f"features.{modality}"], tensors[f"presence.{modality}"], meta["sources"][modality]
            )
        return catalog


__all__ = ["CATALOG_JSON", "CATALOG_TENSORS", "ItemCatalog"]
