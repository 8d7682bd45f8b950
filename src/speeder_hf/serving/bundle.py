"""Self-contained model directories.

A Speeder model directory holds everything needed to recommend without the training data:

- `config.json` + `model.safetensors`: the model, including the catalog feature table (`item_table` buffers);
- the tokenizer files (with Speeder's `<item>` / `<|pos_i|>` tokens);
- `item_catalog.json` (+ an empty `item_catalog.safetensors`): the `ItemCatalog` index (external item ids, titles,
  texts) without features, which are already the model's buffers; its size must match `config.num_items`;
- optionally `sasrec/`: the SASRec model whose item embeddings are the `id` modality, used to retrieve candidates;
- optionally (`remote_code=True`), the code files, `auto_map` and `custom_pipelines` that let
  `pipeline("sequential-recommendation", model=dir, trust_remote_code=True)` recommend, and
  `AutoModel.from_pretrained(dir, trust_remote_code=True)` load the model, where `speeder_hf` is not installed. The
  code files are copies of the package's own modules (the pipeline's and the model's import graph), made here and
  laid side by side, as transformers imports them.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel
from transformers.dynamic_module_utils import get_imports

from ..catalog.item_catalog import CATALOG_JSON, CATALOG_TENSORS, ItemCatalog
from ..catalog.sasrec import SASRec
from ..model import configuration_speeder, modeling_speeder
from ..model.spae import check_tokenizer
from ..training.lora import merge_lora
from . import pipeline_speeder
from .loading import SASREC_DIR, catalog_json_for, check_catalog_matches, hub_file
from .loading import load_sasrec_for as _load_sasrec_network

logger = logging.getLogger(__name__)

REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_speeder.SpeederConfig",
    "AutoModel": "modeling_speeder.SpeederForSequentialRec",
    "AutoModelForCausalLM": "modeling_speeder.SpeederForSequentialRec",
}
# `pipeline(task, model=dir, trust_remote_code=True)` loads `impl` from the directory's code files and the model with
# the transformers classes named by `pt` (the Auto class, which `auto_map` points at the shipped model class).
REMOTE_CODE_PIPELINES = {
    pipeline_speeder.TASK: {
        "impl": f"{Path(pipeline_speeder.__file__).stem}.{pipeline_speeder.SequentialRecPipeline.__name__}",
        "pt": ["AutoModel"],
    }
}
# Third-party packages the copied code may import. transformers' `check_imports` refuses to load a remote-code
# model whose files import a package that is not installed, and a model that ships needs torch and transformers
# anyway. Their own dependencies (numpy, safetensors, tqdm, huggingface_hub) are left out on purpose: the shipped
# code reaches safetensors files through transformers' reader, so it keeps loading whatever transformers requires.
REMOTE_CODE_PACKAGES = frozenset({"torch", "transformers"})


def remote_code_files() -> list[Path]:
    """The package files `trust_remote_code` needs: the config, modeling and pipeline modules plus every module they
    import relatively (recursively, across the sub-packages), in a stable order.

    Raises:
        ImportError: a relative import names a package rather than a module (it cannot be flattened), or two of the
            files share a name (they would overwrite each other in the flat model directory).
    """
    files = dict.fromkeys(Path(m.__file__) for m in (configuration_speeder, modeling_speeder, pipeline_speeder))
    pending = list(files)
    while pending:
        for target in _relative_import_targets(pending.pop(0)).values():
            if target not in files:
                files[target] = None
                pending.append(target)
    names = Counter(path.name for path in files)
    if clashes := sorted(name for name, count in names.items() if count > 1):
        raise ImportError(f"Remote-code files share the names {clashes}; they are copied into one flat folder.")
    return list(files)


def _relative_import_targets(path: Path) -> dict[ast.ImportFrom, Path]:
    """Each relative `from <dots><module> import name` of `path` and the module file it names."""
    targets = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parents[node.level - 1]
            target = base.joinpath(*(node.module or "").split(".")).with_suffix(".py")
            if not node.module or not target.is_file():
                raise ImportError(
                    f"{path}:{node.lineno} imports {'.' * node.level}{node.module or ''}, which is not a module file; "
                    "remote-code files import modules as `from .module import name` so they can be copied flat."
                )
            targets[node] = target
    return targets


def flat_source(path: str | Path) -> str:
    """The text of `path` as it ships: each relative import `from ..pkg.module import name` becomes
    `from .module import name`, as the files lie side by side in a model directory (transformers copies and
    imports only such flat siblings)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for node, target in _relative_import_targets(path).items():
        line = lines[node.lineno - 1]
        head = f"from {'.' * node.level}{node.module} import"
        start = line.index(head, node.col_offset)
        lines[node.lineno - 1] = f"{line[:start]}from .{target.stem} import{line[start + len(head) :]}"
    return "".join(lines)


def check_remote_code_imports(path: str | Path) -> None:
    """Raises `ImportError` if the file imports anything but the standard library, torch, transformers and
    relative siblings: such a file fails to load on a machine without that package, binds the installed
    `speeder_hf` instead of the copied code, or imports a sibling that transformers does not copy (it follows only
    `from .module import name`, one level, no subpackage)."""
    path = Path(path)
    allowed = REMOTE_CODE_PACKAGES | set(sys.stdlib_module_names)
    outside = set(get_imports(path)) - allowed
    # `get_imports` skips imports inside try / if-available blocks; an absolute self-import is wrong anywhere.
    outside |= _absolute_self_imports(path)
    outside |= _uncopied_relative_imports(path)
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


def _uncopied_relative_imports(path: Path) -> set[str]:
    """Relative imports other than `from .sibling import name`: `from . import x`, `from ..x import y` and
    `from .pkg.mod import y` name files that transformers' `get_relative_import_files` does not copy."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.level > 1 or not node.module or "." in node.module:
                found.add("." * node.level + (node.module or ""))
    return found


def add_remote_code(save_directory: str | Path) -> list[Path]:
    """Copies the remote-code files into a saved model directory and writes into its `config.json` the `auto_map`
    for AutoConfig, AutoModel and AutoModelForCausalLM and the `custom_pipelines` entry of the
    `sequential-recommendation` task. Returns the copied files.

    The files are the package's modules, copied at every export with only their relative imports flattened
    ([`flat_source`]), so the shipped code is never a second copy to keep in step by hand; each copy is checked with
    [`check_remote_code_imports`].

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
        target.write_text(flat_source(source), encoding="utf-8")
        check_remote_code_imports(target)
        copied.append(target)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {**config.get("auto_map", {}), **REMOTE_CODE_AUTO_MAP}
    config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **REMOTE_CODE_PIPELINES}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return copied


# ----- the catalog index and the retriever ------------------------------------------------------------------------
def catalog_index(catalog: ItemCatalog) -> ItemCatalog:
    """The part of a catalog a published model needs: ids, titles and texts. Features are left out (the model
    holds them) and so are image paths (local files of the machine that built the catalog)."""
    return ItemCatalog(catalog.item_ids, catalog.titles, catalog.texts)


def load_catalog_for(model: PreTrainedModel, path_or_repo: str | Path | None = None, **hub_kwargs: Any) -> ItemCatalog:
    """The catalog saved with `model` (in `path_or_repo`, default the model's `name_or_path`), with its features when
    it has any, checked against the model's feature table with [`check_catalog_matches`]. (The pipeline reads only
    the items: `speeder_hf.serving.loading.load_item_index_for`.)

    Raises:
        FileNotFoundError: no catalog was saved with the model.
        ValueError: the catalog's size differs from the model's.
    """
    index = catalog_json_for(model, path_or_repo, **hub_kwargs)
    path_or_repo = path_or_repo if path_or_repo is not None else model.name_or_path
    if ItemCatalog.read_meta(index.parent).get("modalities"):
        hub_file(path_or_repo, CATALOG_TENSORS, **hub_kwargs)  # a full catalog: fetch its features next to it
    catalog = ItemCatalog.load(index.parent)
    check_catalog_matches(model, catalog, source=f"{CATALOG_JSON} in {path_or_repo}")
    return catalog


def load_sasrec_for(model: PreTrainedModel, path_or_repo: str | Path | None = None, **hub_kwargs: Any) -> SASRec | None:
    """The SASRec saved with `model` in `sasrec/` (None when there is none), checked against the catalog size; a
    `speeder_hf.catalog.sasrec.SASRec` (see `speeder_hf.serving.loading.load_sasrec_for`)."""
    return _load_sasrec_network(model, path_or_repo, network_class=SASRec, **hub_kwargs)


# ----- the whole directory ---------------------------------------------------------------------------------------
def save_pretrained_bundle(
    model: PreTrainedModel,
    save_directory: str | Path,
    tokenizer,
    catalog: ItemCatalog,
    sasrec: SASRec | None = None,
    remote_code: bool = True,
    **save_kwargs: Any,
) -> Path:
    """Saves a model that recommends on its own: weights (with the catalog feature table), tokenizer, the catalog
    index, optionally the SASRec retriever and, with `remote_code`, the `trust_remote_code` files.

    A PEFT-wrapped model is merged first (`merge_and_unload`, in place), so a plain `from_pretrained` loads the
    published weights.

    Args:
        model: a `SpeederForSequentialRec` (or a PEFT wrapper of one) with its feature table set.
        save_directory: created if needed.
        tokenizer: the tokenizer the model was trained with (checked against the config's token ids).
        catalog: the `ItemCatalog` whose rows the feature table holds.
        sasrec: the SASRec whose item embeddings are the `id` modality; saved to `sasrec/` for retrieval.
        remote_code: also write the code files, `auto_map` and `custom_pipelines` ([`add_remote_code`]).
        **save_kwargs: passed to `model.save_pretrained`.

    Raises:
        ValueError: the catalog (or SASRec) size or the tokenizer disagree with the model.
    """
    if isinstance(model, PeftModel):
        logger.info("Merging the LoRA adapters into the base weights before saving.")
        model = merge_lora(model)
    check_catalog_matches(model, catalog)
    check_tokenizer(tokenizer, model.config)
    if sasrec is not None and sasrec.num_items != model.config.num_items:
        raise ValueError(
            f"The SASRec has {sasrec.num_items} items but the model's catalog has {model.config.num_items}."
        )
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_directory, **save_kwargs)
    tokenizer.save_pretrained(save_directory)
    catalog_index(catalog).save(save_directory)
    if sasrec is not None:
        sasrec.save_pretrained(save_directory / SASREC_DIR)
    if remote_code:
        add_remote_code(save_directory)
    return save_directory


def load_pretrained_bundle(
    path_or_repo: str | Path, **from_pretrained_kwargs: Any
) -> tuple[PreTrainedModel, Any, ItemCatalog, SASRec | None]:
    """Loads `(model, tokenizer, catalog, sasrec)` saved by [`save_pretrained_bundle`] with the installed package's
    classes, and checks that they agree (catalog size, special-token ids). `sasrec` is None when none was saved."""
    model = modeling_speeder.SpeederForSequentialRec.from_pretrained(path_or_repo, **from_pretrained_kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path_or_repo)
    check_tokenizer(tokenizer, model.config)
    return model, tokenizer, load_catalog_for(model, path_or_repo), load_sasrec_for(model, path_or_repo)


__all__ = [
    "REMOTE_CODE_AUTO_MAP",
    "REMOTE_CODE_PIPELINES",
    "SASREC_DIR",
    "add_remote_code",
    "catalog_index",
    "check_catalog_matches",
    "check_remote_code_imports",
    "flat_source",
    "load_catalog_for",
    "load_pretrained_bundle",
    "load_sasrec_for",
    "remote_code_files",
    "save_pretrained_bundle",
]
