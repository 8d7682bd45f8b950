"""`load_dataset_by_name`: the datasets the examples and benchmarks use, found by short name.

- `beauty`: Amazon Beauty, shipped inside the package (package data in `speeder_hf/data/amazon-beauty`), else from
  the shared data folder.
- `sports`: Amazon Sports_and_Outdoors (keywords as text, no titles) from the shared data folder.
- `movielens` (alias `ml-100k`): MovieLens-100K with posters as images, from the shared data folder only (its terms
  forbid redistribution, so it is never copied into the project).
- any folder: a `RecDataset.save` output (`rec_dataset.json`); LLaRA's windows (`train_data.jsonl`,
  `Val_data.jsonl`, `Test_data.jsonl`, with `id2name.txt` or `u.item`; its own split, see `load_llara`); RecBole
  atomic files (`<name>.inter`, optional `<name>.item`); or one S3Rec sequence file `*.txt[.gz]` with an optional
  `items.jsonl[.gz]` beside it. A RecBole `.inter` file may also be named directly.

Amazon items are named by their ASINs and MovieLens items by their movie ids, as the datasets name them.

The shared data folder is `$SPEEDER_HF_DATA` when set, else `shared/data` beside the checkout.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

from .images import attach_images
from .llara import is_llara_folder, load_llara
from .movielens import load_movielens, movielens_posters
from .rec_dataset import RecDataset
from .recbole import INTER_SUFFIX, load_recbole, recbole_inter_file
from .s3rec import load_s3rec

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout, for an editable install
EMBEDDED_BEAUTY = ("Beauty.txt.gz", "items.jsonl.gz")  # package data, in `speeder_hf/data/amazon-beauty/`
NAMES = ("beauty", "sports", "movielens")


def shared_data_dir() -> Path:
    """`$SPEEDER_HF_DATA`, else `shared/data` beside the checkout."""
    return Path(os.environ.get("SPEEDER_HF_DATA", REPO_ROOT.parent / "shared" / "data"))


def load_dataset_by_name(name: str) -> RecDataset:
    """Loads `beauty`, `sports`, `movielens` / `ml-100k`, or a dataset folder (see the module docstring).

    Raises:
        FileNotFoundError: the files are not where they were looked for (the message lists the places).
    """
    key = name.lower()
    shared = shared_data_dir()
    if key == "beauty":
        embedded = resources.files(__package__) / "amazon-beauty"
        if all(embedded.joinpath(n).is_file() for n in EMBEDDED_BEAUTY):
            with ExitStack() as stack:  # real files even when the package is not unpacked on disk
                paths = [stack.enter_context(resources.as_file(embedded.joinpath(n))) for n in EMBEDDED_BEAUTY]
                return load_s3rec(*paths, name="beauty")
        found = _s3rec_files(shared / "beauty", "Beauty")
        if found:
            return load_s3rec(*found, name="beauty")
        raise FileNotFoundError(f"Beauty not found in the package ({embedded}) or in {shared / 'beauty'}.")
    if key == "sports":
        found = _s3rec_files(shared / "sports", "Sports_and_Outdoors")
        if not found:
            raise FileNotFoundError(f"Sports not found in {shared / 'sports'} (set SPEEDER_HF_DATA).")
        return load_s3rec(*found, name="sports")
    if key in ("movielens", "ml-100k"):
        folder = shared / "llara_movielens"
        if not (folder / "ml-100k_u.data").is_file():
            raise FileNotFoundError(f"MovieLens-100K not found in {folder} (set SPEEDER_HF_DATA).")
        rec = load_movielens(folder / "ml-100k_u.data", folder / "u.item", name="movielens")
        posters = shared / "movielens_posters" / "ml100k_to_ml1m_posters.tsv"
        return attach_images(rec, movielens_posters(posters)) if posters.is_file() else rec
    folder = Path(name)
    if folder.is_file() and folder.suffix == INTER_SUFFIX:
        return load_recbole(folder)
    if (folder / "rec_dataset.json").is_file():
        return RecDataset.load(folder)
    if is_llara_folder(folder):
        return load_llara(folder)
    inter = recbole_inter_file(folder)
    if inter is not None:
        return load_recbole(inter)
    found = _s3rec_files(folder) if folder.is_dir() else None
    if found:
        return load_s3rec(*found)
    raise FileNotFoundError(
        f"Unknown dataset {name!r}: not one of {NAMES}, nor a folder holding rec_dataset.json, LLaRA's "
        "*_data.jsonl files, a RecBole *.inter file or an S3Rec *.txt file."
    )


def _s3rec_files(folder: Path, stem: str | None = None) -> tuple[Path, Path | None] | None:
    """The S3Rec sequence file `<stem>.txt[.gz]` in `folder` (without a stem: the folder's only `*.txt[.gz]`) and
    its `items.jsonl[.gz]`, or None when the folder has no such file."""
    if not folder.is_dir():
        return None
    sequences = sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith((".txt", ".txt.gz")) and (stem is None or p.name.split(".")[0] == stem)
    )
    if not sequences:
        return None
    if len(sequences) > 1 and stem is None:
        raise ValueError(
            f"{folder} holds several sequence files {[p.name for p in sequences]}; pass one to load_s3rec."
        )
    items = next((folder / n for n in ("items.jsonl", "items.jsonl.gz") if (folder / n).is_file()), None)
    return sequences[0], items


__all__ = ["NAMES", "load_dataset_by_name", "shared_data_dir"]
