"""`speeder-hf`: the command line of speeder_hf. Each subcommand is a thin front to a library function.

    speeder-hf build-catalog --dataset beauty --out catalogs/beauty        # ItemCatalog (+ SASRec) on disk
    speeder-hf train --dataset beauty --output_dir outputs/speeder-beauty  # = examples/finetune.py
    speeder-hf evaluate --model_dir outputs/speeder-beauty --dataset beauty
    speeder-hf recommend --model_dir outputs/speeder-beauty --history B004756YJA "Red lipstick"
    speeder-hf card --model_dir outputs/speeder-beauty --eval_results outputs/speeder-beauty/eval_results.json \\
        --out model_cards/speeder-beauty.md
    speeder-hf push --model_dir outputs/speeder-beauty --repo_id me/speeder-beauty
    speeder-hf app --model_dir outputs/speeder-beauty                     # the web demo (extra [app])

Every flag is a dataclass field spelt `--snake_case`, as `TrainingArguments`' are; `HfArgumentParser` also takes
`--kebab-case`.

Bad input (a malformed data line, an unknown item, a missing file, a wrong flag value) is answered with one line on
stderr, which names the file and line, the item or the flag, and exit code 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from transformers import HfArgumentParser

from speeder_hf.data import DataFormatError
from speeder_hf.serving.recommend import UnknownItemError

from .arguments import FinetuneArguments, ItemFeatureArguments, SampleArguments, SASRecArguments, job_field

logger = logging.getLogger(__name__)

# Errors of the user's input, whose messages say what is wrong and where: one line and exit code 2, not a traceback.
# (DataFormatError and UnknownItemError are ValueErrors; they are named for the reader.)
INPUT_ERRORS = (DataFormatError, UnknownItemError, FileNotFoundError, ValueError)
INPUT_ERROR_EXIT_CODE = 2


def _finetune_arguments(namespace: argparse.Namespace, fields: Sequence[str] | None = None) -> FinetuneArguments:
    """A `FinetuneArguments` from the parsed flags of its fields (the others keep their defaults)."""
    names = [f.name for f in dataclasses.fields(FinetuneArguments) if fields is None or f.name in fields]
    return FinetuneArguments(**{name: getattr(namespace, name) for name in names})


def _split(rec, model_config, seed: int):
    """The split `run_finetune` evaluated on: same candidate count, history length and seed, so the same candidates."""
    from speeder_hf.data import make_split

    return make_split(
        rec, num_candidates=model_config.num_candidates, seed=seed, max_history_len=model_config.max_history_len
    )


# ----- subcommands ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CatalogArguments(SampleArguments, SASRecArguments, ItemFeatureArguments):
    """The flags of `build-catalog`: the job's item-feature, SASRec and sample groups, its dataset, and `out`."""

    out: str = dataclasses.field(kw_only=True, metadata={"help": "Folder to save the catalog (and sasrec/) to."})
    dataset: str = job_field("dataset")


@dataclasses.dataclass
class EvaluateArguments:
    """The flags of `evaluate`."""

    model_dir: str = dataclasses.field(metadata={"help": "A directory saved by `train` / save_pretrained_bundle."})
    dataset: str = dataclasses.field(metadata={"help": "The dataset the model was trained on (name or folder)."})
    split: str = dataclasses.field(default="test", metadata={"choices": ["validation", "test"]})
    seed: int = job_field("seed", help="The split seed used in training.")
    max_samples: int | None = dataclasses.field(default=None, metadata={"help": "Evaluate only the first N users."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Users per forward pass."})
    out: str | None = dataclasses.field(default=None, metadata={"help": "Also write the metrics to this JSON file."})


@dataclasses.dataclass
class RecommendArguments:
    """The flags of `recommend`."""

    model_dir: str = dataclasses.field(metadata={"help": "A saved model directory or Hub repo id."})
    history: list[str] = dataclasses.field(metadata={"help": "Item ids or exact titles, oldest first."})
    candidates: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Items to rank (default: retrieve them)."}
    )
    top_k: int = dataclasses.field(default=10, metadata={"help": "Items listed."})
    json: bool = dataclasses.field(default=False, metadata={"help": "Print the ranking as JSON."})


@dataclasses.dataclass
class CardArguments:
    """The flags of `card`."""

    model_dir: str = dataclasses.field(metadata={"help": "A directory saved by `train`."})
    eval_results: str = dataclasses.field(metadata={"help": "eval_results.json written by `train`."})
    out: str = dataclasses.field(metadata={"help": "Where to write the card (e.g. model_cards/speeder-beauty.md)."})
    repo_id: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub id used in the usage snippets (default: the directory name)."}
    )
    license: str = dataclasses.field(default="apache-2.0", metadata={"help": "The card's license."})
    template: str | None = dataclasses.field(
        default=None, metadata={"help": "A Jinja card template (default: the package's model_card_template.md)."}
    )
    space_id: str | None = dataclasses.field(
        default=None, metadata={"help": "The Hub Space serving the model's web demo, linked from the card."}
    )


@dataclasses.dataclass
class PushArguments:
    """The flags of `push`."""

    model_dir: str = dataclasses.field(metadata={"help": "A directory saved by `train`."})
    repo_id: str = dataclasses.field(metadata={"help": "The Hub repo to create or update."})
    eval_results: str | None = dataclasses.field(
        default=None, metadata={"help": "Default: <model_dir>/eval_results.json."}
    )
    card: str | None = dataclasses.field(default=None, metadata={"help": "Upload this card instead of generating one."})
    private: bool = dataclasses.field(default=False, metadata={"help": "Create the repo private."})
    space_id: str | None = dataclasses.field(
        default=None, metadata={"help": "The Hub Space serving the model's web demo, linked from the card."}
    )


@dataclasses.dataclass
class AppArguments:
    """The flags of `app`."""

    model_dir: str = dataclasses.field(metadata={"help": "A saved model directory or Hub repo id."})
    catalog: str | None = dataclasses.field(
        default=None, metadata={"help": "The model's catalog folder (build-catalog --out), for the items' images."}
    )
    host: str = dataclasses.field(
        default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: reachable from others)."}
    )
    port: int | None = dataclasses.field(
        default=None, metadata={"help": "Port (default: Gradio's, 7860 or the next free one)."}
    )
    share: bool = dataclasses.field(default=False, metadata={"help": "Also open a temporary public gradio.live link."})


def build_catalog_command(args: argparse.Namespace) -> None:
    from speeder_hf.data import make_split
    from speeder_hf.serving.bundle import SASREC_DIR

    from .finetune import build_catalog, load_named_dataset

    catalog_fields = [f.name for f in dataclasses.fields(CatalogArguments) if f.name != "out"]
    settings = _finetune_arguments(args, catalog_fields)
    rec = load_named_dataset(settings.dataset)
    split = make_split(
        rec, num_candidates=settings.num_candidates, seed=settings.seed, max_history_len=settings.max_history_len
    )
    catalog, sasrec, _ = build_catalog(rec, split, settings)
    out = Path(args.out)
    catalog.save(out)
    if sasrec is not None:
        sasrec.save_pretrained(out / SASREC_DIR)
    print(f"Saved the catalog of {len(catalog)} items with modalities {catalog.modalities} to {out}.")


def train_command(args: argparse.Namespace) -> None:
    from .finetune import run_finetune

    settings = _finetune_arguments(args)
    results = run_finetune(settings)
    if not results.get("main_process", True):
        return  # under accelerate launch / torchrun the main process reports, saves and publishes
    print(json.dumps(results["metrics"], indent=2))
    print(f"Model saved to {settings.output_dir}.")
    if settings.push_to_hub:
        from speeder_hf.hub.publishing import publish_folder

        print("Published:", publish_folder(settings.output_dir, settings.push_to_hub))


def evaluate_command(args: argparse.Namespace) -> None:
    from speeder_hf.evaluation.ranking import evaluate_ranking
    from speeder_hf.serving.bundle import load_pretrained_bundle

    from .finetune import load_named_dataset

    model, tokenizer, catalog, _ = load_pretrained_bundle(args.model_dir)
    rec = load_named_dataset(args.dataset)
    dataset_ids = rec.items["item_id"][:]
    if rec.num_items != len(catalog) or dataset_ids != catalog.item_ids:
        renamed = rec.num_items == len(catalog) and rec.items["title"][:] == catalog.titles
        raise SystemExit(
            f"Dataset {args.dataset!r} does not have the catalog the model in {args.model_dir} was built on"
            + (
                # Same items in the same rows under other ids: a bundle saved before S3Rec data kept its ASINs.
                f": the same items under other ids (the model's {catalog.example_ids()}, the dataset's "
                f"{', '.join(map(repr, dataset_ids[:3]))}), as in a model saved before S3Rec data kept its "
                "ASINs; retrain it to evaluate it here."
                if renamed
                else "."
            )
        )
    rows = _split(rec, model.config, args.seed)[args.split]
    if args.max_samples is not None:
        rows = rows.select(range(min(args.max_samples, len(rows))))
    metrics = evaluate_ranking(
        model, tokenizer, rows, item_titles=catalog.titles, item_texts=catalog.texts, batch_size=args.batch_size
    )
    text = json.dumps({"dataset": rec.name, "split": args.split, "metrics": metrics}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def recommend_command(args: argparse.Namespace) -> None:
    from speeder_hf.serving.recommend import Recommender

    recommender = Recommender.from_pretrained(args.model_dir)
    (ranking,) = recommender.recommend([args.history], [args.candidates], top_k=args.top_k)
    if args.json:
        print(json.dumps(ranking, ensure_ascii=False))
        return
    for rank, item in enumerate(ranking, 1):
        print(f"{rank:>3}. {item['title'] or '(no title)'}  [id {item['item_id']}]  score {item['score']:.4f}")


def card_command(args: argparse.Namespace) -> None:
    from speeder_hf.hub.model_card import build_model_card

    card = build_model_card(
        args.model_dir,
        args.eval_results,
        repo_id=args.repo_id,
        license=args.license,
        template_path=args.template,
        space_id=args.space_id,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    card.save(args.out)
    print(f"Wrote the model card to {args.out}.")


def push_command(args: argparse.Namespace) -> None:
    from huggingface_hub import ModelCard

    from speeder_hf.hub.publishing import publish_folder

    card = ModelCard.load(args.card) if args.card else None
    url = publish_folder(
        args.model_dir,
        args.repo_id,
        card=card,
        eval_results=args.eval_results,
        private=args.private or None,
        space_id=args.space_id,
    )
    print(f"Published {args.model_dir} to {args.repo_id}: {url}")


def app_command(args: argparse.Namespace) -> None:
    from .app import launch

    try:
        launch(args.model_dir, args.catalog, host=args.host, port=args.port, share=args.share)
    except ImportError as error:  # the optional extra is missing: say how to install it, in one line
        print(f"speeder-hf app: error: {error}", file=sys.stderr)
        raise SystemExit(INPUT_ERROR_EXIT_CODE) from None


# ----- parser --------------------------------------------------------------------------------------------------
# name, flags, handler, one-line help, description
SUBCOMMANDS = (
    ("train", FinetuneArguments, train_command,
     "Train, evaluate and save a model (the job of examples/finetune.py).",
     "Dataset -> catalog -> SASRec -> Speeder from an LLM -> MPO -> test metrics -> saved model. "
     "Use -1 for max_train_samples / max_eval_samples to mean all."),
    ("build-catalog", CatalogArguments, build_catalog_command,
     "Encode a dataset's items (text, image) and train SASRec (id); save the ItemCatalog.",
     "Builds the item catalog the way `train` does (cached features), and saves it with its SASRec."),
    ("evaluate", EvaluateArguments, evaluate_command,
     "Evaluate a saved model on a dataset split (VHR@1, HR@K, NDCG@K, MRR).",
     "Rebuilds the split of `train` (same seed, candidates and history length) and evaluates."),
    ("recommend", RecommendArguments, recommend_command,
     "Recommend the next items for one history (ids or titles).",
     "Retrieves candidates (unless given) and reranks them with the model."),
    ("card", CardArguments, card_command,
     "Generate the model card (README.md) of a saved model from its evaluation results.",
     "Fills the card template: Hub metadata, model-index, example recommendations, usage, training."),
    ("push", PushArguments, push_command,
     "Publish a saved model to the Hub (card written last, one upload_folder commit).",
     "Builds the card (unless --card is given), writes README.md, creates the repo, uploads."),
    ("app", AppArguments, app_command,
     "Serve the web demo of a saved model (Gradio; needs the [app] extra).",
     "Pick a history by title, see the reranked recommendations beside the retriever's order."),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speeder-hf", description="Speeder multimodal-LLM sequential recommendation (speeder_hf)."
    )
    parser.add_argument(
        "--verbose", action="store_true", help="Log at INFO level, and show the traceback of an input error."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=HfArgumentParser)

    for name, arguments, handler, summary, description in SUBCOMMANDS:
        command = commands.add_parser(name, dataclass_types=arguments, help=summary, description=description)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; returns the exit code: 0, or 2 after printing an input error (`INPUT_ERRORS`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    try:
        args.handler(args)
    except INPUT_ERRORS as error:
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"speeder-hf {args.command}: error: {message}", file=sys.stderr)
        return INPUT_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
