"""Self-contained model directories.

A Speeder model directory holds everything needed to recommend without the training data:

- `config.json` + `model.safetensors`: the model, including the catalog feature table (`item_table` buffers);
- the tokenizer files (with Speeder's `<item>` / `<|pos_i|>` tokens);
- `catalog.json`: the catalog index (external item ids, titles, texts), whose size must match `config.num_items`;
- optionally (`remote_code=True`), the code files and `auto_map` that let
  `AutoModel.from_pretrained(dir, trust_remote_code=True)` load the model where `speeder_hf` is not installed.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedModel
from transformers.dynamic_module_utils import get_imports, get_relative_import_files
from transformers.utils import cached_file

from . import configuration_speeder, modeling_speeder
from .spae import check_tokenizer

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"
CATALOG_FORMAT = "speeder-catalog"
CATALOG_VERSION = 1

REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_speeder.SpeederConfig",
    "AutoModel": "modeling_speeder.SpeederForSequentialRec",
    "AutoModelForCausalLM": "modeling_speeder.SpeederForSequentialRec",
}
# Third-party packages the copied code may import: transformers' `check_imports` refuses to load a remote-code
# model whose files import a package that is not installed, and these two are always there.
REMOTE_CODE_PACKAGES = frozenset({"torch", "transformers"})


def remote_code_files() -> list[Path]:
    """The package files `trust_remote_code` needs: the config and modeling modules plus every sibling they import
    relatively (recursively), in a stable order. Each is checked with [`check_remote_code_imports`]."""
    roots = [Path(configuration_speeder.__file__), Path(modeling_speeder.__file__)]
    files = dict.fromkeys(roots)
    for root in roots:
        files.update(dict.fromkeys(Path(f) for f in get_relative_import_files(root)))
    for path in files:
        check_remote_code_imports(path)
    return list(files)


def check_remote_code_imports(path: str | Path) -> None:
    """Raises `ImportError` if the file imports anything but the standard library, torch, transformers and
    relative siblings: such a file fails to load on a machine without that package, or binds the installed
    `speeder_hf` instead of the copied code."""
    path = Path(path)
    allowed = REMOTE_CODE_PACKAGES | set(sys.stdlib_module_names)
    outside = set(get_imports(path)) - allowed
    # `get_imports` skips imports inside try / if-available blocks; an absolute self-import is wrong anywhere.
    outside |= _absolute_self_imports(path)
    if outside:
        raise ImportError(
            f"{path} imports {sorted(outside)}; remote-code files may import only the standard library, "
            f"{sorted(REMOTE_CODE_PACKAGES)} and relative siblings (from .x import y)."
        )


def _absolute_self_imports(path: Path) -> set[str]:
    package = __name__.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(name for name in names if name.split(".")[0] == package)
    return found


def add_remote_code(save_directory: str | Path) -> list[Path]:
    """Copies the remote-code files into a saved model directory and writes `auto_map` for AutoConfig, AutoModel
    and AutoModelForCausalLM into its `config.json`. Returns the copied files.

    `register_for_auto_class` is not used: it keeps one auto class per model class (so AutoModel and
    AutoModelForCausalLM cannot both be mapped) and changes global class state for every later save.
    """
    save_directory = Path(save_directory)
    config_path = save_directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: call model.save_pretrained({str(save_directory)!r}).")
    copied = []
    for source in remote_code_files():
        target = save_directory / source.name
        shutil.copyfile(source, target)
        copied.append(target)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {**config.get("auto_map", {}), **REMOTE_CODE_AUTO_MAP}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return copied


# ----- the catalog index ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedCatalog:
    """The catalog index saved with a model: per catalog row, the external item id, title and text.

    The feature vectors are not repeated here: they are the model's `item_table` buffers in `model.safetensors`.
    """

    item_ids: list[str]
    titles: list[str | None]
    texts: list[str | None]

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if len(self.titles) != n or len(self.texts) != n:
            raise ValueError(
                f"Catalog columns differ in length: {n} item_ids, {len(self.titles)} titles, {len(self.texts)} texts."
            )
        if len(set(self.item_ids)) != n:
            duplicate = next(i for i, count in Counter(self.item_ids).items() if count > 1)
            raise ValueError(f"Catalog item_id {duplicate!r} appears more than once.")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_catalog(cls, catalog: Any) -> SavedCatalog:
        """From any catalog with `item_ids`, `titles` and `texts` sequences (an `ItemCatalog`, a `SavedCatalog`)."""
        texts = getattr(catalog, "texts", None)
        titles = list(catalog.titles)
        return cls(
            item_ids=[str(i) for i in catalog.item_ids],
            titles=titles,
            texts=list(texts) if texts is not None else [None] * len(titles),
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CATALOG_FILE
        payload = {
            "format": CATALOG_FORMAT,
            "version": CATALOG_VERSION,
            "num_items": self.num_items,
            "item_ids": self.item_ids,
            "titles": self.titles,
            "texts": self.texts,
        }
        path.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path_or_repo: str | Path, **hub_kwargs: Any) -> SavedCatalog:
        """Reads `catalog.json` from a model directory (or a Hub repo, through the cache).

        Raises:
            FileNotFoundError: no catalog was saved with the model.
            ValueError: the file is not a Speeder catalog, or is inconsistent.
        """
        path = cached_file(str(path_or_repo), CATALOG_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if path is None:
            raise FileNotFoundError(
                f"No {CATALOG_FILE} in {path_or_repo}: save the model with speeder_hf.export.save_pretrained_bundle "
                "(or pass a catalog explicitly)."
            )
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("format") != CATALOG_FORMAT:
            raise ValueError(f"{path} is not a Speeder catalog (format {payload.get('format')!r}).")
        if payload.get("version", 0) > CATALOG_VERSION:
            raise ValueError(
                f"{path} has catalog version {payload['version']}; this speeder_hf reads up to {CATALOG_VERSION}."
            )
        catalog = cls(item_ids=payload["item_ids"], titles=payload["titles"], texts=payload["texts"])
        if payload["num_items"] != catalog.num_items:
            raise ValueError(f"{path} declares {payload['num_items']} items but lists {catalog.num_items}.")
        return catalog


def check_catalog_matches(model: PreTrainedModel, catalog: Any, source: str = "the catalog") -> None:
    """Raises a clear `ValueError` when a catalog and a model's feature table have different sizes (a checkpoint
    loaded against another catalog: every item id would silently map to the wrong features)."""
    n_catalog = len(catalog.item_ids)
    n_config, n_table = model.config.num_items, model.item_table.num_items
    if not n_catalog == n_config == n_table:
        raise ValueError(
            f"Catalog size mismatch: {source} has {n_catalog} items, but the model was trained on a catalog of "
            f"{n_config} items (config.num_items; feature table {n_table} rows). Load the catalog saved with this "
            "checkpoint, or rebuild the model's feature table with model.set_item_features for the new catalog."
        )


def load_catalog_for(model: PreTrainedModel, path_or_repo: str | Path | None = None, **hub_kwargs: Any) -> SavedCatalog:
    """The catalog saved with `model` (from `path_or_repo`, default the model's `name_or_path`), checked against the
    model's feature table with [`check_catalog_matches`]."""
    path_or_repo = path_or_repo if path_or_repo is not None else model.name_or_path
    if not path_or_repo:
        raise ValueError("The model was not loaded from a directory: pass the catalog (or its directory) explicitly.")
    catalog = SavedCatalog.load(path_or_repo, **hub_kwargs)
    check_catalog_matches(model, catalog, source=f"{CATALOG_FILE} in {path_or_repo}")
    return catalog


# ----- the whole directory ---------------------------------------------------------------------------------------
def save_pretrained_bundle(
    model: PreTrainedModel,
    save_directory: str | Path,
    tokenizer,
    catalog: Any,
    remote_code: bool = True,
    **save_kwargs: Any,
) -> Path:
    """Saves a model that recommends on its own: weights (with the catalog feature table), tokenizer,
    `catalog.json` and, with `remote_code`, the `trust_remote_code` files.

    A PEFT-wrapped model is merged first (`merge_and_unload`, in place), so a plain `from_pretrained` loads the
    published weights.

    Args:
        model: a `SpeederForSequentialRec` (or a PEFT wrapper of one) with its feature table set.
        save_directory: created if needed.
        tokenizer: the tokenizer the model was trained with (checked against the config's token ids).
        catalog: the catalog whose rows the feature table holds (`item_ids`, `titles`, `texts`).
        remote_code: also write `auto_map` and the code files.
        **save_kwargs: passed to `model.save_pretrained`.

    Raises:
        ValueError: catalog size or tokenizer disagree with the model.
    """
    if hasattr(model, "merge_and_unload"):
        logger.info("Merging the LoRA adapters into the base weights before saving.")
        model = model.merge_and_unload()
    saved_catalog = SavedCatalog.from_catalog(catalog)
    check_catalog_matches(model, saved_catalog)
    check_tokenizer(tokenizer, model.config)
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_directory, **save_kwargs)
    tokenizer.save_pretrained(save_directory)
    saved_catalog.save(save_directory)
    if remote_code:
        add_remote_code(save_directory)
    return save_directory


def load_pretrained_bundle(
    path_or_repo: str | Path, **from_pretrained_kwargs: Any
) -> tuple[PreTrainedModel, Any, SavedCatalog]:
    """Loads `(model, tokenizer, catalog)` saved by [`save_pretrained_bundle`], with the installed package's classes,
    and checks that the three agree (catalog size, special-token ids)."""
    from .modeling_speeder import SpeederForSequentialRec

    model = SpeederForSequentialRec.from_pretrained(path_or_repo, **from_pretrained_kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path_or_repo)
    check_tokenizer(tokenizer, model.config)
    return model, tokenizer, load_catalog_for(model, path_or_repo)


__all__ = [
    "CATALOG_FILE",
    "REMOTE_CODE_AUTO_MAP",
    "SavedCatalog",
    "add_remote_code",
    "check_catalog_matches",
    "check_remote_code_imports",
    "load_catalog_for",
    "load_pretrained_bundle",
    "remote_code_files",
    "save_pretrained_bundle",
]
