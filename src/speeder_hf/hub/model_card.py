"""The model card of a saved Speeder model.

[`build_model_card`] fills the card template (`speeder_hf/model_card_template.md`, shipped as package data) from a
saved model directory and its evaluation results: the Hub metadata (library_name, pipeline_tag, base_model,
datasets, tags, license, a `model-index` with the measured metrics), example recommendations (the model's real
output for the example users, which the web demo `speeder_hf_train.app` offers too), how to run the demo, a usage
snippet, training details, limitations and citations (`speeder_hf.hub.citations`).

The card is filled from the model's evaluation report (`speeder_hf.evaluation.report.EvaluationReport`, saved
beside the model as `eval_results.json`), whose example users the web demo shows too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..backbones import SMOLLM2_HUB_ID, is_smollm2
from ..catalog.item_catalog import ItemCatalog
from ..data.split import STRATEGY_TARGETS
from ..evaluation.report import RESULTS_FILE, EvaluationReport, read_examples
from ..metrics import RANKING_METRICS
from ..serving.bundle import SASREC_DIR
from .citations import SASREC_CITATION, SPEEDER_CITATION, DatasetInfo, dataset_info

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE: Traversable = resources.files(__package__) / "model_card_template.md"  # package data
PIPELINE_TASK = "sequential-recommendation"
# The card's `pipeline_tag`. The Hub's task list has no recommendation task, and its inference widget never runs a
# model's custom code, so any real task here ("text-generation", say) would promise a widget that fails on this model
# and list it among models it does not belong with. "other" is the Hub's tag for models outside its tasks: it claims
# no widget, and set explicitly it keeps the Hub from guessing a task from config.json (whose auto_map names
# AutoModelForCausalLM). The web demo (`speeder_hf_train.app`) is where the model runs in a browser.
HUB_PIPELINE_TAG = "other"
TAGS = ["recommendation", "sequential-recommendation", "multimodal", "speeder", "custom_code"]
# Metrics put in the model-index, in this order (others from `evaluate_ranking` stay in the card's table only).


def _base_model(report: EvaluationReport, config: dict[str, Any]) -> str:
    """The Hub id of the backbone: `base_model` in the results, the `llm` argument when it names a Hub model, or the
    id recorded in the LLM's config."""
    if report.base_model:
        return report.base_model
    llm = str(report.arguments.get("llm", ""))
    if is_smollm2(llm):
        return SMOLLM2_HUB_ID
    hub_id = re.compile(r"[\w.-]+/[\w.-]+")
    for candidate in (llm, config.get("text_config", {}).get("_name_or_path", "")):
        if hub_id.fullmatch(candidate) and not Path(candidate).exists():
            return candidate
    raise ValueError(
        f'Cannot tell the backbone\'s Hub id (llm={llm!r}); add "base_model": "<org>/<name>" to the results file.'
    )


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metric_type(name: str) -> str:
    return name.lower().replace("@", "_at_")


def _metrics_table(metrics: dict[str, Any]) -> str:
    names = [k for k in metrics if isinstance(metrics[k], int | float) and not isinstance(metrics[k], bool)]
    return "\n".join(f"| {name} | {_fmt(metrics[name])} |" for name in names)


def _baselines_section(report: EvaluationReport, model_name: str) -> str:
    if not report.baselines:
        return ""
    rows = {model_name: report.metrics, **report.baselines}
    names = [m for m in RANKING_METRICS if all(m in r for r in rows.values())]
    lines = [
        "### Baselines (same users, same candidates)\n",
        "| model | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(_fmt(r[m]) for m in names) + " |" for name, r in rows.items()]
    return "\n".join(lines) + "\n"


def _history_section(metrics: dict[str, Any]) -> str:
    buckets = metrics.get("by_history_len") or {}
    if not buckets:
        return ""
    names = [m for m in ("VHR@1", "NDCG@10", "MRR") if all(m in b for b in buckets.values())]
    lines = [
        "### By history length\n",
        "| history length | users | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    lines += [
        f"| {bucket} | {b['num_samples']} | " + " | ".join(_fmt(b[m]) for m in names) + " |"
        for bucket, b in buckets.items()
    ]
    return "\n".join(lines) + "\n"


def _recommend_examples(model_dir: Path, examples: list[dict[str, Any]], top_k: int = 5) -> list[list[dict]]:
    from ..serving.recommend import Recommender

    recommender = Recommender.from_pretrained(str(model_dir))
    return recommender.recommend([e["history"] for e in examples], top_k=top_k)


def _title(catalog: ItemCatalog, item_id: str) -> str:
    title = catalog.titles[catalog.index(item_id)]
    return title if title else f"item {item_id}"


def _examples(examples: list[dict[str, Any]], recommendations: list[list[dict]], catalog: ItemCatalog) -> str:
    """The card's example section: each example user's history and the model's ranking for it."""
    sections = []
    for example, recs in zip(examples, recommendations):
        history = [_title(catalog, i) for i in example["history"]]
        shown = history if len(history) <= 8 else ["…", *history[-8:]]
        ranked = [
            f"{rank}. {r['title'] or r['item_id']} (id {r['item_id']}, score {r['score']:.3f})"
            for rank, r in enumerate(recs, 1)
        ]
        hit = next((rank for rank, r in enumerate(recs, 1) if r["item_id"] == example["target"]), None)
        truth = _title(catalog, example["target"])
        verdict = f"ranked #{hit}" if hit else f"not in the top {len(recs)}"
        sections.append(
            f"**User {example['user_id']}**: {len(history)} items, oldest first: "
            + "; ".join(shown)
            + "\n\n"
            + "\n".join(f"    {line}" for line in ranked)
            + f"\n\nThe true next item was *{truth}* (id {example['target']}): {verdict}.\n"
        )
    return "\n".join(sections)


def _app_section(repo_id: str, space_id: str | None) -> str:
    """How to open the web demo (`speeder_hf_train.app`): the Space, when there is one, and the local command."""
    local = (
        f'Run it on your machine with `pip install "speeder_hf[app]"` and `speeder-hf app --model_dir {repo_id}`. '
        "Its example users are the ones below."
    )
    if not space_id:
        return f"The web demo picks a history by title and shows the ranked recommendations. {local}"
    return (
        f"**[Try the model in its web demo](https://huggingface.co/spaces/{space_id})**: pick a history by title and "
        f"see the ranked recommendations. {local}"
    )


def _check_app_examples(model_dir: Path, examples: list[dict[str, Any]], source: str) -> None:
    """Warns when the results saved beside the model, whose example users the web demo shows, hold other examples
    than the card's."""
    saved = model_dir / RESULTS_FILE
    if saved.is_file() and read_examples(saved) != examples:
        logger.warning(
            "The card's examples (from %s) differ from those in %s, which the web demo shows.", source, saved
        )


def _limitations(
    report: EvaluationReport, config: dict[str, Any], info: DatasetInfo, trained_modalities: set[str]
) -> str:
    metrics, args = report.metrics, report.arguments
    steps = sum(int(s.get("max_steps") or 0) for s in report.mpo_stages)
    points = []
    if args.get("llm_layers"):
        points.append(
            f"The language model keeps only the first {args['llm_layers']} transformer layers of the base model "
            "(`--llm_layers`, a compute budget for CPUs), so it is not the full base model."
        )
    points += [
        f"The training budget was small: {steps} optimizer steps on {report.machine}. The model demonstrates "
        "the method and is not a tuned production recommender.",
        f"A random pick among the {config['num_candidates']} candidates scores VHR@1 = "
        f"{1 / config['num_candidates']:.3f} in expectation; compare VHR@1 = {metrics['VHR@1']:.3f} with that.",
        f"The evaluation ranks the target among a fixed candidate set ({metrics['protocol']}). It is not a ranking "
        "over the full catalog, and its numbers are not comparable with full-ranking results or with the paper's "
        "(which used other backbones and budgets).",
        f"The catalog is fixed at {config['num_items']} items. Unknown ids or titles raise an error. Adding items "
        "requires encoding them with the same encoders, adding them to the feature table "
        "(`model.set_item_features`), and fine-tuning.",
        f"Only the {config['max_history_len']} most recent history items are read; older items are dropped.",
        "When no candidates are given, the retrieval stage bounds what can be recommended: the LLM only reorders the "
        f"{config['num_candidates']} retrieved items.",
    ]
    weights = report.priors.get("weights")
    if weights:
        listed = ", ".join(f"{name} {value:.2f}" for name, value in weights.items())
        points.append(
            "The candidate scores add the LLM's to two priors, SASRec's and the candidates' feature similarity to the "
            f"history, with weights fitted on validation users ({listed}). Most of the ranking comes from the "
            "priors; at this budget the LLM's part carries little."
        )
    untrained = [m for m in config["modalities"] if m not in trained_modalities]
    if untrained:
        points.append(
            f"The {', '.join(untrained)} modality had no data in {info.pretty}, so its expert was never trained; "
            "give it no weight."
        )
    if args.get("max_eval_samples"):
        points.append(
            f"The metrics cover the first {metrics['num_samples']} test users only (max_eval_samples), so they carry "
            "sampling error."
        )
    points += [
        "This is a reconstruction of Speeder from the paper's abstract and the LLaRA code base, not the authors' code.",
        "The model needs custom code, which the Hub's inference widget does not run: the card claims no widget "
        "task (pipeline_tag `other`), and the web demo above is where the model runs in a browser.",
        f"Data terms: {info.terms}",
    ]
    return "\n".join(f"- {p}" for p in points)


def build_model_card(
    model_dir: str | Path,
    eval_results: EvaluationReport | str | Path | dict[str, Any],
    repo_id: str | None = None,
    license: str = "apache-2.0",
    template_path: str | Path | None = None,
    space_id: str | None = None,
) -> ModelCard:
    """The model card of a directory saved by `save_pretrained_bundle`, filled from its evaluation results.

    The example recommendations are computed here, by running the saved model on the `examples`
    of the report.

    Args:
        model_dir: the saved model (config, weights, tokenizer, item catalog, optional `sasrec/`).
        eval_results: the evaluation report that `run_finetune` saved: the report, its file, or the file's parsed
            content.
        repo_id: the Hub id used in the usage snippets; defaults to the directory name.
        license: the license of the model weights.
        template_path: a Jinja template; defaults to the package's `model_card_template.md`.
        space_id: the Hub Space that serves this model's web demo (`speeder_hf_train.app`), linked from the card.

    Raises:
        ValueError: the results lack a required field, or name an unknown dataset or backbone.
        FileNotFoundError: missing model files or template.
    """
    model_dir = Path(model_dir)
    if isinstance(eval_results, EvaluationReport):
        source, report = "the evaluation report", eval_results
    elif isinstance(eval_results, dict):
        source = "the evaluation results"
        report = EvaluationReport.from_dict(eval_results, source)
    else:
        source, report = str(eval_results), EvaluationReport.load(eval_results)
    missing = [key for key in ("VHR@1", "num_samples", "protocol") if key not in report.metrics]
    if missing:
        raise ValueError(f"{source} ('metrics') lacks {missing}; it must be the report written by run_finetune.")
    if not report.examples:
        raise ValueError(f"{source} has no examples; add some with speeder_hf.evaluation.report.card_examples.")
    template = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"Model card template {template} not found; pass template_path.")

    config = json.loads((model_dir / "config.json").read_text())
    catalog = ItemCatalog.load(model_dir)
    info = dataset_info(report.dataset)
    base_model = _base_model(report, config)
    repo_id = repo_id or model_dir.name
    model_name = repo_id.split("/")[-1]
    metrics, stages, args = report.metrics, report.mpo_stages, report.arguments
    has_sasrec = (model_dir / SASREC_DIR / "config.json").is_file()

    examples = report.examples
    _check_app_examples(model_dir, examples, source)
    recommendations = _recommend_examples(model_dir, examples)
    examples_section = _examples(examples, recommendations, catalog)

    eval_entries = [
        EvalResult(
            task_type=PIPELINE_TASK,
            task_name="Sequential recommendation",
            dataset_type=info.slug,
            dataset_name=info.pretty,
            dataset_split=report.split,
            metric_type=_metric_type(name),
            metric_name=name,
            metric_value=float(metrics[name]),
            metric_config=metrics["protocol"],
        )
        for name in RANKING_METRICS
        if name in metrics
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=HUB_PIPELINE_TAG,
        base_model=base_model,
        datasets=[info.slug],
        language=["en"],
        license=license,
        tags=TAGS,
        model_name=model_name,
        eval_results=eval_entries,
    )

    history_ids = json.dumps(examples[0]["history"][-5:])
    candidate_ids = json.dumps(
        list(dict.fromkeys([examples[0]["target"], *[r["item_id"] for r in recommendations[0]]]))[:4]
    )
    calls = (
        "# A history of item ids (or exact titles), oldest first: retrieve, then rerank.\n"
        f"print(recommend({history_ids}, top_k=5))\n"
    )
    usage = (
        "from transformers import pipeline\n\n"
        f'recommend = pipeline("sequential-recommendation", model="{repo_id}", trust_remote_code=True)\n'
        + calls
        + "# Rank your own candidates instead.\n"
        f'print(recommend({{"history": {history_ids}, "candidates": {candidate_ids}}}))\n'
        "# Several users at once.\n"
        f"print(recommend([{history_ids}, {json.dumps(examples[-1]['history'][-3:])}], batch_size=2, top_k=3))"
    )
    package_usage = (
        "import speeder_hf  # registers the Speeder classes and the sequential-recommendation pipeline\n"
        "from transformers import pipeline\n\n"
        f'recommend = pipeline("sequential-recommendation", model="{repo_id}")  # no trust_remote_code\n'
        + calls.rstrip("\n")
    )
    model_only = (
        f'from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)'
    )

    trained = {m for s in stages for m in s["modalities"]}
    trained_in_order = [m for m in config["modalities"] if m in trained]
    retrieval = (
        "The SASRec saved with the model scores the whole catalog after the history."
        if has_sasrec
        else "Items are ranked by their similarity to the history in the saved item features."
    )
    total_steps = sum(int(s.get("max_steps") or 0) for s in stages)
    batch, accumulation = args.get("batch_size"), args.get("gradient_accumulation_steps", 1)
    budget = (
        f"{total_steps} optimizer steps over {len(stages)} stages, {report.train_samples_seen} training samples "
        f"seen ({batch} per device × {accumulation} accumulation per step), "
        f"{report.train_seconds / 60:.1f} min of training"
    )
    if report.wall_seconds is not None:
        budget += (
            f"; {report.wall_seconds / 60:.1f} min end to end, which includes item features, SASRec, "
            "evaluation and saving"
        )
    settings = [
        f"{k} {args[k]}"
        for k in (
            "max_history_len",
            "num_candidates",
            "prompt_style",
            "answer_mode",
            "lora_r",
            "lora_alpha",
            "max_train_samples",
            "sasrec_epochs",
            "seed",
        )
        if k in args
    ]
    rows, adapters = [], False
    for i, stage in enumerate(stages, 1):
        adapters = adapters or bool(stage.get("lora"))  # adapters stay once a stage adds them
        rows.append(
            f"| {i} | {stage['name']} | {', '.join(stage['modalities'])} | {', '.join(stage['train'])} | "
            f"{'yes' if adapters else 'no'} | {stage['learning_rate']:g} | {stage.get('max_steps')} |"
        )
    citations = [
        "The Speeder paper:",
        f"```bibtex\n{SPEEDER_CITATION}\n```",
        f"{info.pretty}:",
        f"```bibtex\n{info.citations}\n```",
    ]
    if "id" in trained or has_sasrec:
        citations += [
            "SASRec, which provides the `id` features and the retriever:",
            f"```bibtex\n{SASREC_CITATION}\n```",
        ]
    date = f" on {report.date}" if report.date else ""
    targets = f"{STRATEGY_TARGETS[report.split_strategy]} and " if report.split_strategy in STRATEGY_TARGETS else ""
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=model_name,
        dataset_pretty=info.pretty,
        modalities_text=_and(trained_in_order),
        base_model=base_model,
        num_items=config["num_items"],
        retrieval_text=retrieval,
        num_candidates=config["num_candidates"],
        last_label=config["label_tokens"][config["num_candidates"] - 1],
        pointer_text=(
            ": each label's logit plus a learned pointer score between the answer position and that candidate's "
            "item token"
            if config.get("candidate_pointer") and config.get("answer_mode") == "index"
            else ""
        ),
        usage_snippet=usage,
        package_snippet=package_usage,
        model_snippet=model_only,
        evaluation_intro=(
            f"These results are on the {report.split} split of {info.pretty}: {metrics['num_samples']} users, "
            f"with {targets}the protocol {metrics['protocol']}. They were measured{date} with "
            "`speeder_hf.evaluation.ranking.evaluate_ranking`."
        ),
        metrics_table=_metrics_table(metrics),
        metrics_notes=(
            "VHR@1 is the share of users whose answer is valid and equals the target (the paper's headline metric). "
            "ValidRatio is the share of valid answers, and HR@1 is LLaRA's correct / valid. HR@K, NDCG@K and MRR "
            "rank the target among the candidates by the model's scores; ties count against the target.\n"
        ),
        baselines_section=_baselines_section(report, model_name),
        history_section=_history_section(metrics),
        examples_section=examples_section,
        app_section=_app_section(repo_id, space_id),
        training_intro=(
            "Training used MPO: each stage is its own `Trainer.train()`, with a fresh optimizer over exactly the "
            "parameter groups listed. Its active modalities are model state that `forward` reads."
            + ("" if any("llm" in stage["train"] for stage in stages) else " The LLM stays frozen except through LoRA.")
        ),
        stages_table="\n".join(rows),
        budget_text=budget,
        hardware_text=report.machine,
        settings_text=", ".join(settings) if settings else "the package defaults",
        command=report.command or "speeder_hf_train.finetune.run_finetune",
        limitations=_limitations(report, config, info, trained),
        citations_section="\n\n".join(citations),
    )
    leftover = re.search(r"\{\{|\}\}|\[More Information Needed\]", card.content)
    if leftover:
        raise ValueError(f"The rendered card still holds template text near {card.content[leftover.start() :][:60]!r}.")
    return card


__all__ = [
    "DEFAULT_TEMPLATE",
    "HUB_PIPELINE_TAG",
    "build_model_card",
]
