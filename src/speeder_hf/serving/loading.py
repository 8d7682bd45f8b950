"""Loading what a saved Speeder model directory (or Hub repo) holds beside the weights: the tokenizer, the catalog's
items and the SASRec retriever, each checked against the model.

This is the loading the pipeline needs, and it ships with the model as remote code, so it reads the files with
transformers and torch alone; `speeder_hf.serving.bundle` writes the directory and loads the full catalog and the
package's `SASRec` class.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

from ..catalog.item_index import CATALOG_JSON, ItemIndex
from ..model.modeling_sasrec import SASRecNetwork
from ..model.modeling_speeder import SpeederForSequentialRec
from ..model.spae import check_tokenizer

SASREC_DIR = "sasrec"


def load_model_and_tokenizer(path: str, **model_kwargs) -> tuple[SpeederForSequentialRec, object]:
    """Loads `SpeederForSequentialRec` and the tokenizer saved beside it.

    Raises:
        ValueError: when the tokenizer's Speeder token ids disagree with the config (a base-LLM tokenizer, or tokens
            added in another order).
    """
    model = SpeederForSequentialRec.from_pretrained(path, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, model.config)
    return model, tokenizer


def hub_file(path_or_repo: str | Path, filename: str, subfolder: str = "", **hub_kwargs: Any) -> Path | None:
    """A file of a model directory or Hub repo (through the cache); None when the model has none."""
    found = cached_file(
        str(path_or_repo), filename, subfolder=subfolder, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    return Path(found) if found is not None else None


def check_catalog_matches(model, catalog: ItemIndex, source: str = "the catalog") -> None:
    """Raises a clear `ValueError` when a catalog and a model's feature table have different sizes (a checkpoint
    used with another catalog: every item id would silently map to another item's features)."""
    n_catalog = len(catalog.item_ids)
    n_config, n_table = model.config.num_items, model.item_table.num_items
    if not n_catalog == n_config == n_table:
        raise ValueError(
            f"Catalog size mismatch: {source} has {n_catalog} items, but the model was trained on a catalog of "
            f"{n_config} items (config.num_items; feature table {n_table} rows). Load the catalog saved with this "
            "checkpoint, or rebuild the model's feature table with model.set_item_features for the new catalog."
        )


def catalog_json_for(model, path_or_repo: str | Path | None = None, **hub_kwargs: Any) -> Path:
    """The `item_catalog.json` saved with `model` (in `path_or_repo`, default the model's `name_or_path`).

    Raises:
        FileNotFoundError: no catalog was saved with the model.
    """
    path_or_repo = path_or_repo if path_or_repo is not None else model.name_or_path
    if not path_or_repo:
        raise ValueError("The model was not loaded from a directory: pass its catalog explicitly.")
    index = hub_file(path_or_repo, CATALOG_JSON, **hub_kwargs)
    if index is None:
        raise FileNotFoundError(
            f"No {CATALOG_JSON} in {path_or_repo}: save the model with "
            "speeder_hf.serving.bundle.save_pretrained_bundle, or pass its catalog explicitly."
        )
    return index


def load_item_index_for(model, path_or_repo: str | Path | None = None, **hub_kwargs: Any) -> ItemIndex:
    """The items of the catalog saved with `model` (ids, titles, texts; no features, which the model holds), checked
    against the model's feature table with [`check_catalog_matches`].

    Raises:
        FileNotFoundError: no catalog was saved with the model.
        ValueError: the catalog's size differs from the model's.
    """
    index = catalog_json_for(model, path_or_repo, **hub_kwargs)
    catalog = ItemIndex.load(index.parent)
    source = path_or_repo if path_or_repo is not None else model.name_or_path
    check_catalog_matches(model, catalog, source=f"{CATALOG_JSON} in {source}")
    return catalog


def load_sasrec_for(
    model,
    path_or_repo: str | Path | None = None,
    network_class: type[SASRecNetwork] = SASRecNetwork,
    **hub_kwargs: Any,
) -> SASRecNetwork | None:
    """The SASRec saved with `model` in `sasrec/` (None when there is none), as a `network_class` in eval mode,
    checked against the catalog size.

    The directory is what `SASRec.save_pretrained` writes: `config.json` holds the constructor's arguments and
    `model.safetensors` the weights.
    """
    path_or_repo = path_or_repo if path_or_repo is not None else model.name_or_path
    if not path_or_repo:
        return None
    config = hub_file(path_or_repo, "config.json", subfolder=SASREC_DIR, **hub_kwargs)
    weights = hub_file(path_or_repo, "model.safetensors", subfolder=SASREC_DIR, **hub_kwargs)
    if config is None or weights is None:
        return None
    settings = json.loads(config.read_text(encoding="utf-8"))
    parameters = inspect.signature(network_class).parameters
    sasrec = network_class(**{name: value for name, value in settings.items() if name in parameters})
    sasrec.load_state_dict(load_state_dict(str(weights)))
    sasrec.eval()
    if sasrec.num_items != model.config.num_items:
        raise ValueError(
            f"The SASRec in {path_or_repo}/{SASREC_DIR} has {sasrec.num_items} items but the model's catalog has "
            f"{model.config.num_items}: they come from different catalogs."
        )
    return sasrec


__all__ = [
    "SASREC_DIR",
    "catalog_json_for",
    "check_catalog_matches",
    "hub_file",
    "load_item_index_for",
    "load_model_and_tokenizer",
    "load_sasrec_for",
]
