"""Publishing a Speeder model to the Hugging Face Hub.

[`publish`] / [`publish_folder`]: `save_pretrained_bundle` -> card (`speeder_hf.hub.model_card`) ->
`HfApi().upload_folder`. The card is written last and uploaded with the files: `push_to_hub` would replace
README.md with an auto-generated stub.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from ..catalog.item_catalog import ItemCatalog
from ..evaluation.report import RESULTS_FILE
from ..serving.bundle import SASREC_DIR, save_pretrained_bundle
from .model_card import build_model_card


def _upload(folder: Path, repo_id: str, private: bool | None, token: str | None, commit_message: str) -> str:
    """Creates the repo if needed and uploads the model files of `folder` (top-level files and `sasrec/`; training
    leftovers in other subfolders, such as MPO checkpoints, stay local). Returns the commit URL."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    if "README.md" not in files:
        raise FileNotFoundError(f"{folder} has no README.md: write the model card before uploading.")
    allow = files + ([f"{SASREC_DIR}/*"] if (folder / SASREC_DIR).is_dir() else [])
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), allow_patterns=allow, commit_message=commit_message
    )
    return getattr(commit, "commit_url", str(commit))


def publish(
    model,
    tokenizer,
    catalog: ItemCatalog,
    repo_id: str,
    card: ModelCard,
    sasrec=None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload Speeder model",
    save_directory: str | Path | None = None,
) -> str:
    """Publishes a model: `save_pretrained_bundle` (merging LoRA, with catalog, SASRec and remote code) into
    `save_directory` (default a temporary folder), then the card as README.md, then one `upload_folder` commit.

    Returns:
        The URL of the commit.
    """
    if save_directory is None:
        with tempfile.TemporaryDirectory() as tmp:
            return publish(model, tokenizer, catalog, repo_id, card, sasrec, private, token, commit_message, tmp)
    folder = save_pretrained_bundle(model, save_directory, tokenizer, catalog, sasrec=sasrec)
    card.save(folder / "README.md")
    return _upload(folder, repo_id, private, token, commit_message)


def publish_folder(
    model_dir: str | Path,
    repo_id: str,
    card: ModelCard | None = None,
    eval_results: str | Path | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload Speeder model",
    space_id: str | None = None,
) -> str:
    """Publishes a directory saved by `save_pretrained_bundle`. Without `card`, one is built with
    [`build_model_card`] from `eval_results` (default `<model_dir>/eval_results.json`), the real `repo_id` and
    the demo's `space_id`; it is written to `<model_dir>/README.md` before the upload.

    Returns:
        The URL of the commit.
    """
    model_dir = Path(model_dir)
    if card is None:
        eval_results = Path(eval_results) if eval_results is not None else model_dir / RESULTS_FILE
        card = build_model_card(model_dir, eval_results, repo_id=repo_id, space_id=space_id)
    card.save(model_dir / "README.md")
    return _upload(model_dir, repo_id, private, token, commit_message)


__all__ = ["publish", "publish_folder"]
