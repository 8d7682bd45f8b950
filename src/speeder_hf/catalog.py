"""`ItemCatalog`: per item, its id, title, text, image path and one feature vector per modality with a
presence mask; saved as JSON + safetensors (never pickle) and installed into a model as its feature table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .data.rec_dataset import RecDataset

CATALOG_JSON = "item_catalog.json"
CATALOG_TENSORS = "item_catalog.safetensors"


class ItemCatalog:
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
        self.item_ids = [str(i) for i in item_ids]
        n = len(self.item_ids)
        self.titles = list(titles) if titles is not None else [None] * n
        self.texts = list(texts) if texts is not None else [None] * n
        self.image_paths = list(image_paths) if image_paths is not None else [None] * n
        for name, values in (("titles", self.titles), ("texts", self.texts), ("image_paths", self.image_paths)):
            if len(values) != n:
                raise ValueError(f"ItemCatalog: {len(values)} {name} for {n} items.")
        self._index = {item_id: row for row, item_id in enumerate(self.item_ids)}
        if len(self._index) != n:
            raise ValueError("ItemCatalog: item_ids are not unique.")
        self.features: dict[str, np.ndarray] = {}
        self.presence: dict[str, np.ndarray] = {}
        self.sources: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_dataset(cls, rec: RecDataset) -> ItemCatalog:
        """A catalog with the items of `rec` (same internal indices) and no features yet."""
        columns = rec.items.to_dict()
        return cls(columns["item_id"], columns["title"], columns["text"], columns["image_path"])

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def modalities(self) -> list[str]:
        """Modalities with features, in the order they were added."""
        return list(self.features)

    # ----- ids and titles -------------------------------------------------------------------------------------
    def index(self, item_id: str) -> int:
        """Internal index of an external item id."""
        try:
            return self._index[str(item_id)]
        except KeyError:
            raise KeyError(f"Unknown item id {item_id!r}: not among the catalog's {len(self)} items.") from None

    def indices(self, item_ids: Sequence[str]) -> list[int]:
        return [self.index(item_id) for item_id in item_ids]

    def resolve(self, item: str) -> int:
        """Internal index of an item given by id or, failing that, by exact title (case-insensitive).

        Raises:
            KeyError: no item has that id or title, or several items share the title.
        """
        if str(item) in self._index:
            return self._index[str(item)]
        wanted = str(item).strip().lower()
        rows = [row for row, title in enumerate(self.titles) if title and title.strip().lower() == wanted]
        if len(rows) == 1:
            return rows[0]
        if rows:
            ids = [self.item_ids[row] for row in rows]
            raise KeyError(f"Title {item!r} is ambiguous: items {ids} share it; pass an item id instead.")
        raise KeyError(f"Unknown item {item!r}: neither an item id nor a title in the catalog.")

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
        (directory / CATALOG_JSON).write_text(json.dumps(meta, ensure_ascii=False))
        tensors = {f"features.{m}": self.features[m] for m in self.modalities}
        tensors.update({f"presence.{m}": self.presence[m] for m in self.modalities})
        save_file(tensors, str(directory / CATALOG_TENSORS), metadata={"format": "speeder_hf.ItemCatalog"})

    @classmethod
    def load(cls, directory: str | Path) -> ItemCatalog:
        """Reads a catalog written by `save`."""
        directory = Path(directory)
        meta = json.loads((directory / CATALOG_JSON).read_text())
        catalog = cls(meta["item_ids"], meta["titles"], meta["texts"], meta["image_paths"])
        tensors = load_file(str(directory / CATALOG_TENSORS)) if meta["modalities"] else {}
        for modality in meta["modalities"]:
            catalog.add_features(
                modality, tensors[f"features.{modality}"], tensors[f"presence.{modality}"], meta["sources"][modality]
            )
        return catalog


__all__ = ["CATALOG_JSON", "CATALOG_TENSORS", "ItemCatalog"]
