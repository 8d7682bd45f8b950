"""The main job end to end: dataset -> item catalog (cached) -> SASRec ID features -> Speeder model from an LLM ->
MPO -> evaluation on the test split -> save -> reload -> recommendations. `examples/finetune.py` and
`speeder-hf train` are thin command-line fronts to [`run_finetune`]."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModel, TrainingArguments, set_seed

from speeder_hf.backbones import load_llm
from speeder_hf.catalog import sasrec
from speeder_hf.catalog.encoders import (
    ImageEncoder,
    TextEncoder,
    default_cache_dir,
    encode_image_modality,
    encode_text_modality,
)
from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec, evaluate_sasrec, sasrec_item_features, train_sasrec
from speeder_hf.data import CandidateSamplingDataset, RecDataset, last_training_rows, make_split, training_sequences
from speeder_hf.evaluation.ranking import evaluate_ranking
from speeder_hf.evaluation.report import EvaluationReport, card_examples
from speeder_hf.machine import machine_line
from speeder_hf.metrics import RANKING_METRICS
from speeder_hf.model import modeling_sasrec
from speeder_hf.model.content_prior import default_modalities
from speeder_hf.model.modeling_speeder import SpeederForSequentialRec
from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.serving.bundle import save_pretrained_bundle
from speeder_hf.serving.recommend import Recommender, retriever_for
from speeder_hf.training.lora import merge_lora
from speeder_hf.training.mpo import default_stages, has_progress, run_mpo
from speeder_hf.training.prior_calibration import PriorFusion, calibrate_priors, calibrate_retrieved_fusion

from .arguments import FinetuneArguments

logger = logging.getLogger(__name__)

PRIOR_FIT_ROWS = 4096  # training rows the prior's starting weight is fitted on (a 1-D fit: more changes little)


def load_named_dataset(name: str) -> RecDataset:
    """`beauty` (embedded in examples/data), `movielens` (../shared/data with posters) or a folder."""
    from speeder_hf import data

    return data.load_dataset_by_name(name)


def build_catalog(rec: RecDataset, split, args: FinetuneArguments) -> tuple[ItemCatalog, SASRec | None, SASRec | None]:
    """Text and image features from frozen encoders (cached on disk) and SASRec item embeddings as `id`.

    Returns the catalog, the SASRec trained on every training sequence (the retriever, the baseline and the prior
    at inference) and, with `args.training_targets == "held_out"`, the held-out SASRec: trained without each
    user's last training item, it gives the `id` features and the prior while Speeder trains on those items, so
    that its scores there are as reliable as on unseen test targets (on the items it trained on, SASRec is right
    far more often than on new ones, and a model stacked on it would learn to trust it too much). Else None and
    the `id` features come from the first SASRec.
    """
    wanted = [m.strip() for m in args.modalities.split(",") if m.strip()]
    catalog = ItemCatalog.from_dataset(rec)
    if "text" in wanted:
        encode_text_modality(catalog, TextEncoder(args.text_encoder, max_length=args.text_max_length), args.cache_dir)
    if "image" in wanted and any(catalog.image_paths):
        encode_image_modality(catalog, ImageEncoder(args.image_encoder), args.cache_dir)
    sasrec = held_out = None
    if "id" in wanted:
        settings = {
            "num_epochs": args.sasrec_epochs,
            "dropout": args.sasrec_dropout,
            "loss": args.sasrec_loss,
            "max_len": args.sasrec_max_len,
            "seed": args.seed,
        }
        train_seqs = training_sequences(rec, seed=args.seed)
        if not train_seqs:
            raise ValueError(
                f"Dataset {rec.name!r} has no training sequences for SASRec (a LLaRA folder needs train_data.jsonl); "
                "drop 'id' from --modalities to build a catalog without it."
            )
        sasrec, best_epoch = cached_sasrec(train_seqs, rec.num_items, split["validation"], settings, args.cache_dir)
        feature_model, feature_seqs = sasrec, train_seqs
        if args.training_targets == "held_out":
            feature_seqs = training_sequences(rec, seed=args.seed, holdout=1)
            held_out, best_epoch = cached_sasrec(
                feature_seqs, rec.num_items, split["validation"], settings, args.cache_dir
            )
            feature_model = held_out
        features, present = sasrec_item_features(feature_model, feature_seqs)
        source = {"encoder": "sasrec", "best_epoch": best_epoch, "held_out_last_training_item": held_out is not None}
        catalog.add_features("id", features, present, source=source)
    return catalog, sasrec, held_out


def cached_sasrec(
    train_sequences: dict[str, list[int]],
    num_items: int,
    validation,
    settings: dict[str, Any],
    cache_dir: str | None = None,
) -> tuple[SASRec, int]:
    """`train_sasrec(train_sequences, num_items, validation, **settings)`, cached on disk (safetensors + JSON) under
    a key of the settings, the exact sequences and the SASRec code, so a rerun of the same job skips the training.
    The model comes back on the CPU either way (it trains on CUDA when one is visible), so a cached and a fresh run
    agree."""
    # The code that trains the model is part of the key: a changed SASRec never reuses an older one's weights.
    code = [hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest() for module in (sasrec, modeling_sasrec)]
    payload = json.dumps([settings, num_items, sorted(train_sequences.items()), code])
    key = hashlib.sha256(payload.encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / f"sasrec-{key}"
    if (folder / "best_epoch.json").is_file():
        logger.info("Loading the cached SASRec from %s", folder)
        return SASRec.from_pretrained(folder).eval(), json.loads((folder / "best_epoch.json").read_text())
    with torch_threads(1):  # a tiny model: a second thread only adds sync overhead (20x slower on a busy box)
        result = train_sasrec(train_sequences, num_items, validation, **settings)
    result.model.save_pretrained(folder)
    (folder / "best_epoch.json").write_text(json.dumps(result.best_epoch))  # written last: marks a complete entry
    return result.model.cpu(), result.best_epoch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_model(
    catalog: ItemCatalog, args: FinetuneArguments, sasrec: SASRec | None = None
) -> tuple[SpeederForSequentialRec, Any]:
    """A Speeder model around the LLM, holding the catalog's feature table, with `sasrec`'s scores as its
    collaborative prior when one is given."""
    tokenizer, llm = load_llm(args.llm, torch.float32, args.llm_layers)
    model = SpeederForSequentialRec.from_catalog(
        llm,
        tokenizer,
        catalog,
        collaborative_prior=sasrec,
        max_history_len=args.max_history_len,
        num_candidates=args.num_candidates,
        prompt_style=args.prompt_style,
        answer_mode=args.answer_mode,
        answer_loss=args.answer_loss,
        label_logits=args.label_logits,
    )
    return model, tokenizer


def content_prior_modalities(args: FinetuneArguments, modalities: list[str]) -> list[str]:
    """The modalities of `--content_prior` among the model's `modalities`.

    Raises:
        ValueError: it names a modality the model does not read.
    """
    if args.content_prior == "none":
        return []
    if args.content_prior == "auto":
        return default_modalities(modalities)
    wanted = [m.strip() for m in args.content_prior.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in modalities]
    if unknown:
        raise ValueError(f"--content_prior names {unknown}, which the model does not read; it reads {modalities}.")
    return wanted


def calibration_users(split, args: FinetuneArguments, num_evaluated: int):
    """The last `args.calibration_rows` validation users, which the priors' weights are fitted on: disjoint from the
    evaluated users (the first ones) when the job evaluates the validation split."""
    validation = split["validation"]
    count = min(args.calibration_rows, len(validation))
    if args.eval_split == "validation" and num_evaluated + count > len(validation):
        raise ValueError(
            f"--max_eval_samples {num_evaluated} and --calibration_rows {count} overlap on the {len(validation)} "
            "validation users: lower one of them."
        )
    return validation.select(range(len(validation) - count, len(validation)))


def print_comparison(speeder: dict[str, Any], sasrec: dict[str, Any], split: str) -> None:
    """Prints Speeder's and SASRec's metrics side by side on the same users and candidates (Speeder's VHR@1 is its
    HR@1 in index mode: every answer names a candidate)."""
    print(f"\n{split} split, {speeder['num_samples']} users, the same candidates for both:")
    print(f"{'metric':<16}{'Speeder':>10}{'SASRec':>10}")
    print(f"{'VHR@1 / HR@1':<16}{speeder['VHR@1']:>10.4f}{sasrec['HR@1']:>10.4f}")
    for name in RANKING_METRICS[3:]:  # after VHR@1 / ValidRatio / HR@1
        print(f"{name:<16}{speeder[name]:>10.4f}{sasrec[name]:>10.4f}")
    better = "Speeder" if speeder["VHR@1"] > sasrec["HR@1"] else "SASRec"
    print(f"Higher VHR@1: {better}")


def mpo_training_args(args: FinetuneArguments) -> TrainingArguments:
    """The `TrainingArguments` shared by the MPO stages (each stage sets its own length and learning rate). Creating
    them sets up the processes of `accelerate launch` / torchrun.

    Raises:
        RuntimeError: the launcher started several processes but they did not join one process group.
    """
    training_args = TrainingArguments(
        output_dir=str(Path(args.output_dir) / "mpo"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        logging_steps=10,
        save_steps=max(args.stage_steps // 2, 1),
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        bf16=args.bf16,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if training_args.world_size != launched:
        # On a machine without GPUs the launcher's processes would each train alone, all into the same folder.
        raise RuntimeError(
            f"The launcher started {launched} processes but this one is alone in its process group (world size "
            f"{training_args.world_size}): without GPUs, set ACCELERATE_USE_CPU=true so that they join a gloo group "
            "(docs/training.md)."
        )
    return training_args


def run_finetune(args: FinetuneArguments) -> dict[str, Any]:
    """Runs the main job; returns its evaluation report as a dict (`EvaluationReport.to_dict`), which is also saved
    as `<output_dir>/eval_results.json`.

    Under several processes (`accelerate launch`, torchrun) every process trains, and only the main one fits the
    priors, saves, evaluates and returns the results; the others return `{"main_process": False, ...}` with no
    metrics once training is done."""
    start = time.time()
    set_seed(args.seed)
    out = Path(args.output_dir)
    rec = load_named_dataset(args.dataset)
    split = make_split(rec, num_candidates=args.num_candidates, seed=args.seed, max_history_len=args.max_history_len)
    logger.info("%s: %s", rec.name, rec.statistics())
    if not len(split["train"]):  # checked before minutes of feature encoding
        raise ValueError(f"Dataset {rec.name!r} gives no training sample (a LLaRA folder needs train_data.jsonl).")

    # First, as it sets up the processes of `accelerate launch` / torchrun (gloo on CPUs) for what follows.
    training_args = mpo_training_args(args)
    # The first process of each machine builds the catalog (encoders, SASRecs) and fills the feature cache; the
    # others then read it, instead of training the same SASRecs and writing the same cache files at the same time.
    with training_args.main_process_first(local=True, desc="item catalog"):
        catalog, sasrec, held_out = build_catalog(rec, split, args)
    if args.collaborative_prior != "none" and sasrec is None:
        raise ValueError(
            "--collaborative_prior needs a SASRec: keep 'id' in --modalities, or pass --collaborative_prior none."
        )
    # In training, the prior reads the SASRec that never trained on the training targets.
    training_prior = (held_out or sasrec) if args.collaborative_prior == "in_training" else None
    # Training a SASRec reseeds and draws from torch's global generator, loading a cached one does not: seeding
    # again gives the new layers (MRC, SPAE, pointer) the same initial weights whether the cache was cold or warm.
    set_seed(args.seed)
    model, tokenizer = build_model(catalog, args, training_prior)
    test = split[args.eval_split]
    if args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    content_modalities = content_prior_modalities(args, catalog.modalities)
    has_priors = args.collaborative_prior != "none" or bool(content_modalities)
    calibration = calibration_users(split, args, len(test)) if has_priors else None

    train = last_training_rows(split["train"]) if args.training_targets == "held_out" else split["train"]
    train = train.shuffle(seed=args.seed)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    train_dataset = CandidateSamplingDataset(train, rec, args.num_candidates, seed=args.seed)
    prior_record: dict[str, Any] = {"mode": args.collaborative_prior}
    if model.collaborative_prior is not None:
        rows = [train_dataset[i] for i in range(min(PRIOR_FIT_ROWS, len(train_dataset)))]
        fusion = PriorFusion.of(model)
        prior_record["initial_weight"] = fusion.set_weights(fusion.fit(rows))["sasrec"]
        logger.info(
            "Collaborative prior: weight %.3f fitted on %d training rows", prior_record["initial_weight"], len(rows)
        )
    collator = SpeederDataCollator(tokenizer, model.config, item_titles=catalog.titles, item_texts=catalog.texts)
    stages = default_stages(
        catalog.modalities,
        max_steps=args.stage_steps,
        learning_rate=args.learning_rate,
        align_learning_rate=args.align_learning_rate,
        mix=args.mpo_mix,
    )
    if args.final_stage_steps is not None:
        stages[-1] = replace(stages[-1], max_steps=args.final_stage_steps)
    resume = args.resume and has_progress(training_args.output_dir)
    if args.resume and not resume:
        # Killed before its first checkpoint: starting over is resuming, and the same command line works after a
        # crash at any step.
        logger.warning(
            "--resume: %s holds no checkpoint yet; MPO starts from its first step.", training_args.output_dir
        )
    train_start = time.time()
    model = run_mpo(
        model,
        stages,
        training_args,
        train_dataset,
        collator,
        resume_from_checkpoint=resume or None,
        lora_kwargs={"r": args.lora_r, "alpha": args.lora_alpha},
        processing_class=tokenizer,
    )
    train_seconds = time.time() - train_start
    if training_args.process_index != 0:
        # The other processes hold the same trained weights (DDP keeps the replicas equal). Fitting the priors,
        # saving and evaluating once, in the main process, keeps them from writing the same files at once.
        return {"main_process": False, "train_seconds": round(train_seconds, 1), "metrics": {}}

    if calibration is not None:
        model = merge_lora(model) if isinstance(model, PeftModel) else model
        if model.collaborative_prior is not None:
            prior_record["trained_weight"] = model.collaborative_prior.weight.item()
        # The saved prior reads the SASRec of every training item (the retriever); the priors' weights are fitted
        # against the LLM's scores on validation users, whose targets neither model trained on.
        if args.collaborative_prior != "none":
            model.set_collaborative_prior(sasrec)
        model.set_content_prior(content_modalities)
        weights = calibrate_priors(model, tokenizer, calibration, catalog.titles, catalog.texts, args.eval_batch_size)
        prior_record.update(weights=weights, content_modalities=content_modalities, calibration_users=len(calibration))
        logger.info("Prior weights %s fitted on %d validation users", weights, len(calibration))
        # The pipeline's two-stage mode meets the retriever's top candidates, not uniformly drawn ones.
        retriever = retriever_for(model, sasrec)
        texts = {"item_titles": catalog.titles, "item_texts": catalog.texts, "batch_size": args.eval_batch_size}
        prior_record["retrieved_fusion"] = calibrate_retrieved_fusion(
            model, tokenizer, calibration, retriever, args.num_candidates, **texts
        )
        logger.info("Weights for retrieved candidates: %s", prior_record["retrieved_fusion"])
    save_pretrained_bundle(model, out, tokenizer, catalog, sasrec)
    model = AutoModel.from_pretrained(out)  # evaluate what was saved, through the Auto class users will call
    metrics = evaluate_ranking(
        model, tokenizer, test, item_titles=catalog.titles, item_texts=catalog.texts, batch_size=args.eval_batch_size
    )
    # Every process trains on its own batches of `batch_size` in each optimizer step.
    samples_per_step = args.batch_size * args.gradient_accumulation_steps * training_args.world_size
    baselines = {}
    if sasrec is not None:
        # Same users and candidates: the model Speeder reads, and the one it has to beat.
        baselines["SASRec"] = evaluate_sasrec(sasrec, test, full_ranking=False, progress=False)
        print_comparison(metrics, baselines["SASRec"], args.eval_split)
    report = EvaluationReport(
        dataset=rec.name,
        split=args.eval_split,
        split_strategy=json.loads(test.info.description)["strategy"],
        metrics=metrics,
        priors=prior_record,
        train_samples_seen=sum(s.max_steps for s in stages) * samples_per_step,
        mpo_stages=[asdict(s) for s in stages],
        train_seconds=round(train_seconds, 1),
        wall_seconds=round(time.time() - start, 1),
        machine=machine_line(),
        command=" ".join(sys.argv),
        arguments=asdict(args),
        date=time.strftime("%Y-%m-%d"),
        baselines=baselines,
        examples=card_examples(test, catalog, args.num_examples),
    )
    report.save(out)

    recommender = Recommender.from_pretrained(str(out))
    for user in test.select(range(min(args.num_examples, len(test)))):
        history = [catalog.item_ids[i] for i in user["history"]]
        (recs,) = recommender.recommend([history], top_k=5)
        print(f"\nUser {user['user_id']}: last items {[catalog.titles[i] for i in user['history'][-3:]]}")
        for rank, item in enumerate(recs, 1):
            print(f"  {rank}. {item['title']} (id {item['item_id']}, score {item['score']:.3f})")
    return report.to_dict()
