"""`ItemIndex`: a catalog's items by row (external id, title, text, image path) and the lookup of an item by id or
title, read from `item_catalog.json`.

It is all a recommendation needs of a catalog (the features are the model's buffers), and it needs neither numpy nor
the training data, so it ships with a saved model as remote code. `speeder_hf.catalog.item_catalog.ItemCatalog`
adds the feature vectors and the writing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CATALOG_JSON = "item_catalog.json"
CATALOG_TENSORS = "item_catalog.safetensors"


class ItemIndex:
    """The items of a catalog, indexed by internal item index.

    Args:
        item_ids: external ids; position = internal index (the row used by the model's feature table).
        titles, texts, image_paths: per-item metadata (None where unknown).
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
                raise ValueError(f"{type(self).__name__}: {len(values)} {name} for {n} items.")
        self._index = {item_id: row for row, item_id in enumerate(self.item_ids)}
        if len(self._index) != n:
            raise ValueError(f"{type(self).__name__}: item_ids are not unique.")

    def __len__(self) -> int:
        return len(self.item_ids)

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
        raise KeyError(
            f"Unknown item {item!r}: neither an item id nor a title in the catalog, whose ids are like "
            f"{self.example_ids()}."
        )

    def example_ids(self, n: int = 3) -> str:
        """The first `n` ids, quoted, for messages: a user who names items in another id scheme (a bundle saved
        when Beauty items were named by row number, asked for an ASIN) sees which one the catalog uses."""
        return ", ".join(repr(item_id) for item_id in self.item_ids[:n])

    # ----- reading --------------------------------------------------------------------------------------------
    @staticmethod
    def read_meta(directory: str | Path) -> dict:
        """The contents of `item_catalog.json` in `directory`."""
        return json.loads((Path(directory) / CATALOG_JSON).read_text(encoding="utf-8"))

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        """The items of the catalog saved in `directory` (`ItemCatalog.save`), without its features."""
        meta = cls.read_meta(directory)
        return cls(meta["item_ids"], meta["titles"], meta["texts"], meta["image_paths"])


__all__ = ["CATALOG_JSON", "CATALOG_TENSORS", "ItemIndex"]
