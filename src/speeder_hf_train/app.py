"""A web demo of a saved Speeder model, with Gradio: pick a history by title, see the ranked recommendations.

    speeder-hf app --model_dir outputs/speeder-beauty        # or a Hub repo id; needs `pip install "speeder_hf[app]"`

In the page a person picks the items of a history (oldest first) by title in a searchable multiselect, and gets the
model's ranking of the retrieved candidates, with scores and the items' images where there are any, beside the
retriever's own order of the same candidates. Bad input (an unknown item, an empty history) is answered with a
message in the page. The example users are the model card's: the `examples` of the evaluation results saved with
the model (`eval_results.json`, see `speeder_hf.evaluation.report`).

A saved model keeps no image paths (they are files of the machine that built its catalog), so the images come from
a catalog folder given with `--catalog` (what `speeder-hf build-catalog --out` writes for the same dataset), whose
paths are files on this machine or http(s) URLs.

The same file is a Hugging Face Space's `app.py`: with `speeder_hf[app]` in the Space's `requirements.txt` and the
model's repo id in the `SPEEDER_MODEL` variable (and a catalog folder in `SPEEDER_CATALOG`, for images),
`python app.py` serves the demo. Its imports are absolute for that
reason: a Space runs it as a top-level script, outside the package.
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from speeder_hf.catalog.item_index import ItemIndex
from speeder_hf.evaluation.report import RESULTS_FILE, read_examples
from speeder_hf.serving.loading import hub_file
from speeder_hf.serving.recommend import FeatureRetriever, Recommender, SASRecRetriever

# Gradio reports usage to a remote server by default; a local demo of a local model has no reason to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MODEL_ENV = "SPEEDER_MODEL"  # the model a Space (or `python -m speeder_hf_train.app` without arguments) serves
CATALOG_ENV = "SPEEDER_CATALOG"  # and the catalog folder its images come from
INSTALL_HINT = 'the web demo needs Gradio: pip install "speeder_hf[app]"'
THUMBNAIL_PIXELS = 64


def load_examples(path_or_repo: str | Path) -> list[dict[str, Any]]:
    """The example users of a saved model: the `examples` (`user_id`, `history` of item ids, `target`) of the
    evaluation results file beside it, which the model card shows too; `[]` when the model has none."""
    found = hub_file(path_or_repo, RESULTS_FILE)
    if found is None:
        return []
    return read_examples(found)


def history_choices(titles: Sequence[str | None], item_ids: Sequence[str]) -> list[tuple[str, str]]:
    """`(label, item_id)` per catalog item, for the history picker: the title, with the id added where the title is
    missing or shared by several items, so that every label names one item."""
    counts = Counter((title or "").strip().lower() for title in titles)
    choices = []
    for title, item_id in zip(titles, item_ids):
        if not title:
            label = f"item {item_id}"
        elif counts[title.strip().lower()] > 1:
            label = f"{title} [id {item_id}]"
        else:
            label = title
        choices.append((label, item_id))
    return choices


def retriever_name(recommender: Recommender) -> str:
    """How the candidates were retrieved, in words."""
    retriever = recommender.retriever
    if isinstance(retriever, SASRecRetriever):
        return "SASRec"
    if isinstance(retriever, FeatureRetriever):
        return f"similarity of the {retriever.modality} features"
    return type(retriever).__name__


class RecommenderDemo:
    """The demo's logic, apart from the page: a history in, a message and two HTML tables out.

    Args:
        recommender: the model, catalog and retriever (`Recommender.from_pretrained`).
        examples: example users (`load_examples`), shown as clickable histories.
        image_paths: per catalog row, an image file or http(s) URL, or None; default the recommender's catalog's.
        title: the page heading.
    """

    def __init__(
        self,
        recommender: Recommender,
        examples: Sequence[dict[str, Any]] = (),
        image_paths: Sequence[str | None] | None = None,
        title: str = "Speeder",
    ):
        if recommender.retriever is None:
            raise ValueError("The demo retrieves candidates: give the Recommender a retriever.")
        self.recommender = recommender
        self.catalog = recommender.catalog
        self.examples = list(examples)
        self.image_paths = list(image_paths if image_paths is not None else self.catalog.image_paths)
        if len(self.image_paths) != len(self.catalog):
            raise ValueError(f"{len(self.image_paths)} image paths for the {len(self.catalog)} items of the catalog.")
        self.title = title
        self.choices = history_choices(self.catalog.titles, self.catalog.item_ids)
        self._labels = {item_id: label for label, item_id in self.choices}

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, catalog: str | Path | None = None) -> RecommenderDemo:
        """The demo of a directory saved by `save_pretrained_bundle`, or of a Hub repo, with the images of the
        catalog folder `catalog` (an `ItemCatalog.save` folder of the same items) when given.

        Raises:
            ValueError: `catalog` holds other items than the model's.
        """
        recommender = Recommender.from_pretrained(str(path_or_repo))
        images = None
        if catalog is not None:
            index = ItemIndex.load(catalog)
            if index.item_ids != recommender.catalog.item_ids:
                raise ValueError(
                    f"The catalog in {catalog} has other items than the model in {path_or_repo} "
                    f"({len(index)} vs {len(recommender.catalog)} items, or another order): give the model's catalog."
                )
            images = index.image_paths
        name = Path(str(path_or_repo)).name
        return cls(recommender, load_examples(path_or_repo), images, title=f"Speeder: {name}")

    # ----- recommending ---------------------------------------------------------------------------------------
    def recommend(self, history: Sequence[str] | None) -> tuple[str, str, str]:
        """`(message, reranked table, retriever table)` for a history of item ids or titles, oldest first. Bad input
        gives its message and two empty tables instead of an exception."""
        try:
            request = self.recommender.prepare(list(history or []))
            (scores,) = self.recommender.score([request])
        except ValueError as error:  # UnknownItemError is one, and so is an empty history
            return f"**Error:** {html.escape(' '.join(str(error).split()))}", "", ""
        ranking = self.recommender.rank(request, scores)
        retrieved = [self.catalog.item_ids[row] for row in request.candidates]
        message = (
            f"{len(retrieved)} candidates retrieved by {retriever_name(self.recommender)}, reranked by the Speeder "
            f"model from a history of {len(request.history)} items."
        )
        return message, self._reranked_table(ranking, retrieved), self._retriever_table(ranking, retrieved)

    def _reranked_table(self, ranking: list[dict[str, Any]], retrieved: list[str]) -> str:
        rows = []
        for rank, item in enumerate(ranking, 1):
            before = retrieved.index(item["item_id"]) + 1
            move = before - rank
            change = f"▲{move}" if move > 0 else f"▼{-move}" if move < 0 else "="
            rows.append(
                f'<tr data-item-id="{html.escape(item["item_id"])}" data-score="{item["score"]:.6f}">'
                f"<td>{rank}</td><td>{self._image_cell(item['item_id'])}</td>"
                f"<td>{html.escape(self._labels[item['item_id']])}</td><td>{html.escape(item['item_id'])}</td>"
                f"<td>{item['score']:.4f}</td><td>{before} ({change})</td></tr>"
            )
        head = "<th>rank</th><th>image</th><th>title</th><th>item id</th><th>score</th><th>retriever rank</th>"
        return _table(head, rows)

    def _retriever_table(self, ranking: list[dict[str, Any]], retrieved: list[str]) -> str:
        reranked = {item["item_id"]: rank for rank, item in enumerate(ranking, 1)}
        rows = [
            f'<tr data-item-id="{html.escape(item_id)}"><td>{rank}</td>'
            f"<td>{html.escape(self._labels[item_id])}</td><td>{html.escape(item_id)}</td>"
            f"<td>{reranked[item_id]}</td></tr>"
            for rank, item_id in enumerate(retrieved, 1)
        ]
        return _table("<th>retriever rank</th><th>title</th><th>item id</th><th>reranked</th>", rows)

    def _image_cell(self, item_id: str) -> str:
        path = self.image_paths[self.catalog.index(item_id)]
        # A URL is the browser's to fetch; a file is inlined, so the page needs no file serving.
        source = path if path and path.startswith(("http://", "https://")) else _thumbnail(path)
        return f'<img src="{html.escape(source)}" alt="" width="{THUMBNAIL_PIXELS}">' if source else ""

    # ----- the page -------------------------------------------------------------------------------------------
    def build(self):
        """The Gradio `Blocks` of the demo (not launched)."""
        gr = import_gradio()
        with gr.Blocks(title=self.title) as page:
            gr.Markdown(
                f"# {html.escape(self.title)}\n"
                f"Pick the items a user interacted with, oldest first (type to search the {len(self.choices)} "
                "titles), then ask for recommendations."
            )
            history = gr.Dropdown(
                choices=self.choices,
                value=[],
                multiselect=True,
                filterable=True,
                allow_custom_value=True,  # ids or titles typed in full are accepted too; unknown ones get a message
                label="History (oldest first)",
                elem_id="history",
            )
            button = gr.Button("Recommend", variant="primary", elem_id="recommend")
            message = gr.Markdown(elem_id="message")
            with gr.Row():
                with gr.Column(scale=3):
                    gr.Markdown("### Reranked by the model")
                    reranked = gr.HTML(elem_id="reranked")
                with gr.Column(scale=2):
                    gr.Markdown(f"### Retriever's order ({html.escape(retriever_name(self.recommender))})")
                    retriever = gr.HTML(elem_id="retriever")
            if self.examples:
                gr.Examples(
                    examples=[[example["history"]] for example in self.examples],
                    example_labels=[f"User {example['user_id']}" for example in self.examples],
                    inputs=[history],
                    label="Example users (the model card's)",
                )
            button.click(self.recommend, inputs=history, outputs=[message, reranked, retriever])
        return page


def _table(head: str, rows: list[str]) -> str:
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


@lru_cache(maxsize=4096)
def _thumbnail(path: str | None) -> str | None:
    """A small JPEG of the image file at `path` as a data URI; None where the item has no image, or its file is not
    on this machine."""
    if not path or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def import_gradio():
    """The `gradio` module, or an `ImportError` that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return gradio


def launch(
    path_or_repo: str | Path,
    catalog: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
) -> None:
    """Serves the demo of a saved model (with the images of `catalog`, see `RecommenderDemo.from_pretrained`) until
    interrupted; Gradio's defaults, or its `GRADIO_SERVER_*` variables, where `host` or `port` is None."""
    import_gradio()  # before loading the model: a missing extra should not cost a model load
    page = RecommenderDemo.from_pretrained(path_or_repo, catalog).build()
    page.launch(server_name=host, server_port=port, share=share)


def main(argv: Sequence[str] | None = None) -> None:
    """`python app.py [MODEL [CATALOG]]`: serves MODEL, else the model named by `$SPEEDER_MODEL` (how a Space passes
    it), with the images of CATALOG, else of `$SPEEDER_CATALOG` when set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model = argv[0] if argv else os.environ.get(MODEL_ENV)
    if not model:
        raise SystemExit(f"usage: app.py MODEL_DIR_OR_REPO [CATALOG_DIR] (or set {MODEL_ENV})")
    launch(model, argv[1] if len(argv) > 1 else os.environ.get(CATALOG_ENV))


__all__ = [
    "CATALOG_ENV",
    "MODEL_ENV",
    "RecommenderDemo",
    "history_choices",
    "import_gradio",
    "launch",
    "load_examples",
    "main",
]

if __name__ == "__main__":
    main()
