"""Accuracy benchmark (targets: docs/design.md#targets): Speeder, its ablations and the baselines under one
training budget, on the same test users, candidates and metric code.

Every LLM method starts from the same backbone and trains LoRA (same rank, learning rates, batch size) on the same
training samples (a seeded subset of the leave-one-out training prefixes, each seen once; per-sample training
candidates are the same for every method). A method with several MPO stages splits those samples over its stages.
SASRec is trained on all training sequences by `benchmarks.prepare_catalogs` (its own protocol) and only evaluated here.

Methods: `speeder`, `speeder_no_gate`, `speeder_no_spae`, `speeder_no_mpo`, `speeder_text_only`, `llara`, `text`,
`mllm` (datasets with images), `sasrec`. Title-answer methods (llara, text, mllm) generate one answer, parsed with
LLaRA's parser: they have VHR@1, ValidRatio and HR@1 but no ranking, so their HR@5/10 and NDCG@5/10 are null.

Writes `<out>/accuracy.json` after every method (a run that runs out of time keeps what it finished; `--resume`
skips methods already there), and `accuracy.md` (tables) and `accuracy.png`. Training checkpoints every
`--save_steps` steps under `--work_dir`, and evaluation saves each batch's outcomes there; after a kill, the same
command with `--resume` continues the interrupted method from its last checkpoint (same settings only) or from its
last evaluated batch, and its `train_seconds` and `eval_seconds` add up the sittings.

    python -m benchmarks.prepare_catalogs --out outputs/bench_catalogs          # once, on CPU
    python -m benchmarks.accuracy --catalog_dir outputs/bench_catalogs --llm smollm2 --time_budget_s 480
    python -m benchmarks.accuracy --quick --out outputs/bench_quick             # tiny model, synthetic data
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from speeder_hf.catalog.sasrec import sasrec_ranks
from speeder_hf.data import CandidateSamplingDataset, last_training_rows, make_split
from speeder_hf.evaluation.ranking import collect_outcomes, rows_fingerprint
from speeder_hf.json_files import write_json
from speeder_hf.metrics import RANKING_METRICS, bucket_indices, mcnemar_test, rank_metrics, target_ranks
from speeder_hf.model.collaborative_prior import CollaborativePrior
from speeder_hf.model.content_prior import default_modalities
from speeder_hf.training.lora import merge_lora
from speeder_hf.training.prior_calibration import PriorFusion, calibrate_priors, prior_inputs
from speeder_hf_train.arguments import BackboneArguments, SampleArguments, job_field
from speeder_hf_train.finetune import PRIOR_FIT_ROWS

from .arguments import parse_arguments, split_commas
from .bench_data import DEFAULT_CATALOG_DIR, BenchData, load_bench_data
from .bookkeeping import RESULTS_DIR, add_run, describe_backbone, machine_description, setup_logging, today
from .learning_curve import LearningCurve, plot_curves, time_to_sasrec
from .methods import METHODS, SASREC, build_model, collator_class
from .quick import synthetic_data, write_tiny_backbone
from .report import METHOD_ORDER, accuracy_section, dataset_names
from .sittings import SITTINGS_FILE, TrainClock, start_sitting
from .training import micro_batch_for, train_method

logger = logging.getLogger("benchmarks.accuracy")

PRIOR = "prior"  # the collaborative prior alone: SASRec's scores through Speeder's prior module
PRIORS = "priors"  # both priors, their weights fitted on the calibration users, no LLM
NO_PRIOR = "speeder_no_prior"  # measured on the speeder row's model before the prior joins
HITS_FILE = "accuracy_hits.json"  # per dataset and method: the evaluated rows' fingerprint and per-user top-1 hits

# Run order (interleaved over datasets): the headline comparison first, so a run cut short keeps it.
ALL_METHODS = [
    "speeder",
    SASREC,
    PRIOR,
    PRIORS,
    "speeder_no_prior",
    "llara",
    "speeder_no_mpo",
    "speeder_no_gate",
    "speeder_no_spae",
    "speeder_text_only",
    "mllm",
    "text",
]
NUM_EXAMPLES = 5  # generated answers kept per title-answer method, to see why answers are invalid
METRIC_KEYS = RANKING_METRICS


@dataclass
class AccuracyArguments(SampleArguments, BackboneArguments):
    """The flags of `python -m benchmarks.accuracy`: the job's backbone and sample groups, and the job's other knobs
    it takes (`job_field`) with the same spelling and meaning, and the same default unless this budget differs."""

    catalog_dir: Path = field(default=DEFAULT_CATALOG_DIR, metadata={"help": "prepare_catalogs output"})
    datasets: list[str] = field(default_factory=lambda: ["beauty", "movielens"], metadata={"help": "prepared datasets"})
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS), metadata={"help": f"among {ALL_METHODS}"})
    out: Path = field(default=RESULTS_DIR, metadata={"help": "folder for accuracy.json/.md/.png"})
    work_dir: Path | None = field(
        default=None, metadata={"help": "checkpoints (outputs/accuracy_work; --quick: a temp dir)"}
    )
    save_steps: int = field(
        default=50, metadata={"help": "checkpoint every N optimizer steps (0: never); --resume continues"}
    )
    train_samples: int = field(default=4000, metadata={"help": "training samples per method (each once)"})
    curve_every: int = field(
        default=0, metadata={"help": "speeder row: validation VHR@1 every N optimizer steps (0: no curve)"}
    )
    curve_users: int = field(default=500, metadata={"help": "validation users of the learning curve"})
    calibration_rows: int = job_field(
        "calibration_rows", help="validation users the prior's weight is fitted on (disjoint from the curve's)"
    )
    batch_size: int = field(default=32, metadata={"help": "samples per optimizer step"})
    final_stage_share: float | None = field(
        default=None,
        metadata={
            "help": "share of the training samples for MPO's last stage (all modalities); default: equal per stage"
        },
    )
    max_micro_tokens: int = field(default=32768, metadata={"help": "tokens per micro batch (memory)"})
    learning_rate: float = job_field("learning_rate")
    align_learning_rate: float = job_field("align_learning_rate")
    max_test_users: int = field(default=1000, metadata={"help": "seeded subset when the evaluated split is larger"})
    eval_split: str = job_field(
        "eval_split",
        help="test or validation: compare variants (stage shares, learning rates) on validation, never on test",
    )
    eval_batch_size: int = job_field("eval_batch_size", default=128, help="index-answer evaluation batch")
    generation_batch_size: int = field(default=128, metadata={"help": "title-generation batch"})
    max_new_tokens: int = field(default=64, metadata={"help": "LLaRA's generation length (stops at eos)"})
    time_budget_s: float | None = field(default=None, metadata={"help": "start no method after this many seconds"})
    resume: bool = field(
        default=False,
        metadata={
            "help": "keep methods already in <out>/accuracy.json and continue an interrupted method from its checkpoint"
        },
    )
    redo: bool = field(
        default=False,
        metadata={
            "help": "with --resume: run the listed methods again and replace their rows (earlier runs no longer "
            "list them)"
        },
    )
    quick: bool = field(default=False, metadata={"help": "tiny random model and synthetic data (smoke test)"})
    plot_only: bool = field(default=False, metadata={"help": "rewrite accuracy.md/.png from <out>/accuracy.json"})

    def __post_init__(self) -> None:
        self.datasets, self.methods = split_commas(self.datasets), split_commas(self.methods)
        if self.work_dir is None and not self.quick:
            self.work_dir = Path("outputs/accuracy_work")
        if self.redo and not self.resume:
            raise ValueError("--redo replaces rows of an earlier run: use it with --resume")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"--eval_split must be test or validation, not {self.eval_split!r}")
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose among {ALL_METHODS}")


def parse_args(argv: list[str] | None = None) -> AccuracyArguments:
    return parse_arguments(AccuracyArguments, argv, __doc__.split("\n\n")[0])[0]


def apply_quick(args: AccuracyArguments, scratch: Path) -> None:
    """Seconds-long settings: a tiny random backbone, one synthetic dataset with images, a few samples."""
    torch.set_num_threads(1)  # tiny matrices gain nothing from threads, and spinning threads stall a busy machine
    args.llm = str(write_tiny_backbone(scratch / "tiny-llm"))
    args.datasets = ["synthetic"]
    args.train_samples, args.batch_size, args.max_test_users, args.calibration_rows = 24, 8, 12, 8
    args.eval_batch_size = args.generation_batch_size = 5  # 12 users: evaluated (and saved) in three batches
    args.max_new_tokens = 8
    args.save_steps = 1
    args.work_dir = args.work_dir or scratch / "work"


def load_datasets(args: AccuracyArguments) -> dict[str, BenchData]:
    if args.quick:
        return {"synthetic": synthetic_data()}
    return {name: load_bench_data(args.catalog_dir / name, name) for name in args.datasets}


def test_rows(split, max_users: int, seed: int, eval_split: str = "test"):
    """The fixed evaluation users of `eval_split`: all of them, or a seeded subset of `max_users` (kept in split
    order)."""
    test = split[eval_split]
    if len(test) <= max_users:
        return test
    chosen = np.sort(np.random.default_rng(seed).permutation(len(test))[:max_users])
    return test.select(chosen.tolist())


def normalise(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every metric key present (None where the protocol has no ranking), plus the sample count."""
    return {**{key: metrics.get(key) for key in METRIC_KEYS}, "num_samples": metrics["num_samples"]}


EVAL_FOLDER = "eval"
PRIORS_EVAL_FOLDER = "eval-priors"  # the model once the priors joined
CONSTRAINED_EVAL_FOLDER = "eval-constrained"  # title answers restricted to the candidates' titles
VALIDATION_EVAL_FOLDER = "eval-validation"  # free title answers of the curve's validation users
CONSTRAINED = "_constrained"  # suffix of a title method's row with answers restricted to the candidates' titles


def evaluate_llm(
    spec,
    model,
    tokenizer,
    data: BenchData,
    test,
    args: AccuracyArguments,
    work: Path,
    sitting: int,
    folder: str = EVAL_FOLDER,
    constrained: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Evaluates the test rows in parts saved under `work/<folder>` (`collect_outcomes`' `resume_dir`): title
    generation for 1,000 users runs for up to an hour on CPU, and a continued run (`--resume`) answers only the parts
    not saved yet. `work` holds one trained model (it is emptied when training starts afresh). Returns the per-row
    top-1 hits and the metrics, with `eval_seconds` (all sittings) and `eval_sittings`."""
    model = merge_lora(model) if isinstance(model, PeftModel) else model
    if torch.cuda.is_available():
        model = model.to(torch.bfloat16)
    outcomes = collect_outcomes(
        model,
        tokenizer,
        test,
        item_titles=data.catalog.titles,
        item_texts=data.catalog.texts,
        batch_size=args.eval_batch_size if spec.answer_mode == "index" else args.generation_batch_size,
        answer_mode=spec.answer_mode,
        prompt_style=spec.prompt_style,
        collator_class=collator_class(spec),
        max_new_tokens=args.max_new_tokens,
        show_progress=not args.quick,
        num_examples=NUM_EXAMPLES,
        constrain_to_candidates=constrained,
        resume_dir=work / folder,
        part_metadata={"sitting": sitting, "commit": machine_description()["git_commit_at_start"]},
    )
    metrics = outcomes.summary(num_examples=NUM_EXAMPLES)
    return outcomes.valid & outcomes.correct, {
        **normalise(metrics),
        **({"examples": metrics["examples"]} if "examples" in metrics else {}),
        "protocol": metrics["protocol"],
        "by_history_len": {bucket: normalise(values) for bucket, values in metrics["by_history_len"].items()},
        "eval_seconds": round(outcomes.seconds, 1),
        "eval_sittings": len({part["sitting"] for part in outcomes.parts}),
    }


def ranks_row(ranks: np.ndarray, test, protocol: str) -> dict[str, Any]:
    """The result row of a method that ranks every candidate (its top-1 answer is always valid: VHR@1 = HR@1)."""

    def metrics_of(index) -> dict[str, Any]:
        values = rank_metrics(ranks[index])
        return normalise({**values, "VHR@1": values["HR@1"], "ValidRatio": 1.0, "num_samples": len(ranks[index])})

    buckets = bucket_indices([len(h) for h in test["history"]])
    return {
        **metrics_of(slice(None)),
        "protocol": protocol,
        "by_history_len": {bucket: metrics_of(index) for bucket, index in buckets.items()},
    }


def candidate_protocol(test, scorer: str) -> str:
    size = len(test[0]["candidates"])
    return f"{size} candidates (target + {size - 1} sampled negatives), {scorer}"


def evaluate_sasrec_rows(data: BenchData, test) -> tuple[np.ndarray, dict[str, Any]]:
    model = data.sasrec.to("cuda" if torch.cuda.is_available() else "cpu")
    ranks, _ = sasrec_ranks(model, test, full_ranking=False, progress=False)
    return ranks == 0, ranks_row(ranks, test, candidate_protocol(test, "SASRec scores"))


@torch.no_grad()
def evaluate_prior_rows(data: BenchData, test, batch_size: int = 512) -> tuple[np.ndarray, dict[str, Any]]:
    """The collaborative prior alone (Speeder's `CollaborativePrior` holding the prepared SASRec, weight 1), fed the
    SASRec window the collator writes: by construction it ranks exactly as SASRec does, which this row shows."""
    prior = CollaborativePrior.from_sasrec(data.sasrec)
    ranks = []
    for begin in range(0, len(test), batch_size):
        rows = test.select(range(begin, min(begin + batch_size, len(test))))
        history, candidates, target = prior_inputs(rows, prior.sasrec.max_len)
        ranks.append(target_ranks(prior(history, candidates).numpy(), target.numpy()))  # (B,)
    ranks = np.concatenate(ranks)
    return ranks == 0, ranks_row(ranks, test, candidate_protocol(test, "the collaborative prior's scores"))


def evaluate_priors_rows(
    data: BenchData, test, calibration, batch_size: int = 512
) -> tuple[np.ndarray, dict[str, Any]]:
    """Both priors without the LLM: SASRec's scores plus the content similarities, with weights fitted on the
    calibration users as the speeder row's are. What the LLM adds is the speeder row's difference to this one."""
    fusion = data.priors()
    weights = fusion.fit(list(calibration))
    ranks = []
    for begin in range(0, len(test), batch_size):
        history, candidates, target = prior_inputs(
            test.select(range(begin, min(begin + batch_size, len(test)))), fusion.history_len
        )
        scores = fusion.features(history, candidates) @ torch.tensor([weights[n] for n in fusion.prior_names])
        ranks.append(target_ranks(scores.numpy(), target.numpy()))  # (B,)
    ranks = np.concatenate(ranks)
    result = ranks_row(ranks, test, candidate_protocol(test, "the two priors' fitted scores"))
    return ranks == 0, {**result, "prior_weights": weights, "calibration_validation_users": len(calibration)}


def paired_tests(results: dict[str, Any], hits: dict[str, Any]) -> None:
    """Adds to each row with saved hits its exact McNemar test on top-1 hits against a reference evaluated on the
    same rows: `speeder` against `sasrec` (`paired_vs_sasrec`), every other method against `speeder`
    (`paired_vs_speeder`)."""
    for name in dataset_names(results):
        saved = hits.get(name, {})
        for method, row in results[name]["methods"].items():
            reference = SASREC if method == "speeder" else "speeder"
            key = f"paired_vs_{reference}"
            row.pop(key, None)
            if method == reference or method not in saved or reference not in saved:
                continue
            if saved[method]["rows"] != saved[reference]["rows"]:
                continue  # evaluated on other users: no pairing
            first = np.array([c == "1" for c in saved[method]["hits"]])
            second = np.array([c == "1" for c in saved[reference]["hits"]])
            row[key] = {k: round(v, 6) if isinstance(v, float) else v for k, v in mcnemar_test(first, second).items()}


def training_settings(name: str, data: BenchData, args: AccuracyArguments) -> dict[str, Any]:
    """What must be unchanged for an interrupted training run to be continued rather than restarted."""
    keys = ("llm", "llm_layers", "train_samples", "batch_size", "max_micro_tokens", "learning_rate",
            "align_learning_rate", "lora_r", "lora_alpha", "num_candidates", "max_history_len", "seed")  # fmt: skip
    settings = {"method": name, "dataset": data.name, **{key: getattr(args, key) for key in keys}}
    if args.final_stage_share is not None:  # absent otherwise, so runs begun before the option still continue
        settings["final_stage_share"] = args.final_stage_share
    if args.quick:  # the seeded tiny backbone, rewritten into a new temporary folder by every run
        settings["llm"] = "tiny random Llama (quick)"
    return settings


def run_method(
    name: str, data: BenchData, split, test, train, args: AccuracyArguments
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Trains (LLM methods) and evaluates one method on one dataset; returns its per-row top-1 hits and its row,
    by row name (the speeder method also gives `speeder_no_prior`, its LLM before the prior joins)."""
    start = time.perf_counter()
    if name in (SASREC, PRIOR, PRIORS):
        if name == PRIORS:
            hits, result = evaluate_priors_rows(data, test, validation_rows(split, args)[1])
        else:
            hits, result = (evaluate_sasrec_rows if name == SASREC else evaluate_prior_rows)(data, test)
        description = {
            SASREC: "SASRec (the id modality's model), trained on all training sequences",
            PRIOR: "the collaborative prior alone: SASRec's scores through Speeder's prior module",
            PRIORS: "the collaborative and content priors without the LLM, weights fitted on validation users",
        }[name]
        return {
            name: (hits, {**result, "description": description, "eval_seconds": round(time.perf_counter() - start, 1)})
        }
    spec = METHODS[name]
    model, tokenizer = build_model(
        spec, data, args.llm, args.max_history_len, args.num_candidates, num_layers=args.llm_layers
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if spec.collaborative_prior == "in_training":  # as finetune does: start from the prior's calibrated weight
        rows = CandidateSamplingDataset(train, data.rec, args.num_candidates, args.seed)
        fusion = PriorFusion.of(model)
        fusion.set_weights(fusion.fit([rows[i] for i in range(min(PRIOR_FIT_ROWS, len(rows)))]))
    probe = CandidateSamplingDataset(train.select(range(min(64, len(train)))), data.rec, args.num_candidates, args.seed)
    micro, longest = micro_batch_for(
        spec, model, tokenizer, data, [probe[i] for i in range(len(probe))], args.batch_size, args.max_micro_tokens
    )
    work = args.work_dir / data.name / name
    sitting = start_sitting(work, training_settings(name, data, args), resume=args.resume)
    clock = TrainClock(work / SITTINGS_FILE, sitting["train_seconds"])
    curve_rows, calibration = validation_rows(split, args)
    curve = None
    if name == "speeder" and args.curve_every and sitting["sittings"] == 1:
        content = default_modalities(list(model.config.modalities))
        curve = LearningCurve(tokenizer, data, curve_rows, clock, args.curve_every, args.batch_size, content)
    train_start = time.perf_counter()
    model, stages, per_stage = train_method(
        spec,
        model,
        tokenizer,
        data,
        train,
        work,
        batch_size=args.batch_size,
        micro_batch_size=micro,
        learning_rate=args.learning_rate,
        align_learning_rate=args.align_learning_rate,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        seed=args.seed,
        num_candidates=args.num_candidates,
        bf16=device == "cuda",
        save_steps=args.save_steps or None,
        resume=sitting["sittings"] > 1,
        callbacks=[clock] + ([curve] if curve else []),
        final_stage_share=args.final_stage_share,
    )
    trained = clock.finish()
    if curve:
        trained["train_seconds"] = round(trained["train_seconds"] - curve.spent, 1)
    produced = {}
    prior = {}
    if spec.collaborative_prior:  # as finetune does: the full SASRec and the content prior, fitted on validation users
        model = merge_lora(model)
        if model.collaborative_prior is not None:
            prior["trained_weight"] = model.collaborative_prior.weight.item()
        elif name == "speeder":  # the LLM alone, before the prior joins: the recipe without the prior
            produced[NO_PRIOR] = evaluate_llm(spec, model, tokenizer, data, test, args, work, sitting["sittings"])
        model.set_collaborative_prior(data.sasrec)
        model.set_content_prior(default_modalities(list(model.config.modalities)))
        prior["weights"] = calibrate_priors(
            model, tokenizer, calibration, data.catalog.titles, data.catalog.texts, args.eval_batch_size
        )
        prior["calibration_validation_users"] = len(calibration)
    hits, result = evaluate_llm(
        spec,
        model,
        tokenizer,
        data,
        test,
        args,
        work,
        sitting["sittings"],
        folder=PRIORS_EVAL_FOLDER if prior else EVAL_FOLDER,
    )
    if spec.answer_mode == "title":
        # The same model twice more: free answers of validation users (is the budget enough to name candidates?),
        # and test answers restricted by a trie to the candidates' titles, ranked by title log-likelihood, so the
        # row measures ranking quality alone.
        _, checked = evaluate_llm(
            spec, model, tokenizer, data, curve_rows, args, work, sitting["sittings"], VALIDATION_EVAL_FOLDER
        )
        result["validation"] = {
            "users": len(curve_rows),
            "ValidRatio": checked["ValidRatio"],
            "VHR@1": checked["VHR@1"],
        }
        produced[name + CONSTRAINED] = evaluate_llm(
            spec, model, tokenizer, data, test, args, work, sitting["sittings"], CONSTRAINED_EVAL_FOLDER, True
        )
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    shared = {
        "stages": [{"name": s.name, "modalities": s.modalities, "train": s.train} for s in stages],
        "train_samples_per_stage": per_stage,
        "train_samples_seen": sum(per_stage),
        "micro_batch_size": micro,
        "longest_train_prompt_tokens": longest,
        "setup_seconds": round(train_start - start, 1),
        "train_seconds": trained["train_seconds"],
        "train_samples_per_s": round(sum(per_stage) / trained["train_seconds"], 2),
        # more than one: interrupted and continued from a checkpoint (train_seconds adds the sittings up)
        "train_sittings": trained["trained_in_sittings"],
        "train_started_at_commit": sitting["commit"],
    }
    rows = {name: (hits, {**result, "description": spec.description, **shared})}
    if prior:
        rows[name][1]["collaborative_prior"] = prior
    if curve:
        rows[name][1]["learning_curve"] = curve.summary(sasrec_validation_hr1(data, curve_rows))
    for other, (other_hits, other_result) in produced.items():
        if other.endswith(CONSTRAINED):
            description = f"{spec.description}; answers restricted to the candidates' titles (the {name} row's model)"
        else:
            description = f"{METHODS[other].description} (the speeder row's model before the prior joins)"
        rows[other] = (other_hits, {**other_result, "description": description, **shared})
    return rows


def validation_rows(split, args: AccuracyArguments):
    """Disjoint seeded subsets of the validation users: the learning curve's, and the ones the prior's weight is
    fitted on."""
    validation = split["validation"]
    order = np.random.default_rng(args.seed).permutation(len(validation))
    calibration_users, curve_users = args.calibration_rows, args.curve_users
    if calibration_users + curve_users > len(validation):  # a small dataset (MovieLens-100K: 943): halve it
        calibration_users = len(validation) - min(curve_users, len(validation) // 2)
        curve_users = len(validation) - calibration_users
        logger.info(
            "%d validation users: %d fit the prior, %d draw the curve",
            len(validation),
            *[calibration_users, curve_users],
        )
    calibration = np.sort(order[:calibration_users])
    curve = np.sort(order[calibration_users : calibration_users + curve_users])
    if len(calibration) == 0:
        raise ValueError("No validation users to fit the prior's weight on: the split has none.")
    return validation.select(curve.tolist()), validation.select(calibration.tolist())


def sasrec_validation_hr1(data: BenchData, rows) -> float:
    ranks, _ = sasrec_ranks(data.sasrec, rows, full_ranking=False, progress=False)
    return float((ranks == 0).mean())


def dataset_entry(data: BenchData, split, test, train, args: AccuracyArguments) -> dict[str, Any]:
    stats = data.rec.statistics()
    return {
        "budget": {
            "train_samples": len(train),
            "epochs": 1,
            "batch_size": args.batch_size,
            "optimizer_steps": -(-len(train) // args.batch_size),
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": 0.05},
            "learning_rate": args.learning_rate,
            "align_learning_rate": args.align_learning_rate,
            "note": "every LLM method sees the same training samples once (MPO splits them over its stages)"
            + (
                ", each a user's last training item, which the held-out SASRec (id modality, prior in training) "
                "never trained on"
                if data.held_out_sasrec is not None
                else ""
            )
            + "; SASRec trains on all training sequences with early stopping (prepare_catalogs.py)",
        },
        "data": {
            "users": stats["users"],
            "items": stats["items"],
            "interactions": stats["interactions"],
            "train_prefixes": len(split["train"]),
            "test_users": len(test),
            "split": "leave-one-out (last item = test target, the one before = validation target)",
            "eval_split": args.eval_split,
            "candidates": f"{args.num_candidates} (target + {args.num_candidates - 1} uniform negatives outside the "
            f"user's items, fixed by seed {args.seed})",
            "max_history_len": args.max_history_len,
            "untitled_items": data.info.get("untitled_items", 0),
            "features": {k: v for k, v in data.info.items() if k not in ("untitled_items",)},
        },
        "methods": {},
        "skipped": {},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args = parse_args(argv)
    if args.plot_only:
        results = json.loads((args.out / "accuracy.json").read_text())
        write_outputs(results, args.out)
        return results
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="speeder-accuracy-"))
    try:
        if args.quick:
            apply_quick(args, scratch)
        return run(args, start, argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: AccuracyArguments, start: float, argv: Sequence[str] | None) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    out_json = args.out / "accuracy.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if args.resume and out_json.is_file() else {}
    hits_json = args.out / HITS_FILE
    hits: dict[str, Any] = json.loads(hits_json.read_text()) if args.resume and hits_json.is_file() else {}
    # Every invocation that contributed methods (a --resume run adds to an earlier one).
    machine = machine_description()
    this_run = add_run(results.setdefault("runs", []), __spec__.name, argv, machine, key="methods")
    results.update(
        {
            "command": this_run["command"],
            "machine": machine,
            "date": today(),
            "backbone": "tiny random Llama (quick)" if args.quick else describe_backbone(args.llm, args.llm_layers),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }
    )
    datasets = load_datasets(args)
    prepared = {}
    for name, data in datasets.items():
        split = make_split(
            data.rec, num_candidates=args.num_candidates, seed=args.seed, max_history_len=args.max_history_len
        )
        test = test_rows(split, args.max_test_users, args.seed, args.eval_split)
        # With a held-out SASRec, the LLM methods train on the targets it never trained on (finetune's default).
        train = last_training_rows(split["train"]) if data.held_out_sasrec is not None else split["train"]
        train = train.shuffle(seed=args.seed).select(range(min(args.train_samples, len(train))))
        prepared[name] = (split, test, train)
        entry = dataset_entry(data, split, test, train, args)
        previous = results.get(name, {})
        entry["methods"] = previous.get("methods", {}) if args.resume else {}
        results[name] = entry
    # The loaded data are millions of long-lived objects; every stage's trainer runs gc.collect (accelerate's
    # free_memory), which would rescan them all each time.
    gc.freeze()

    for method in args.methods:
        for name, data in datasets.items():
            split, test, train = prepared[name]
            entry = results[name]
            if f"{name}/{method}" in this_run["methods"]:
                continue  # measured already in this run, with the speeder row
            if method in entry["methods"] and not args.redo:
                logger.info("%s / %s: already in %s, kept (--resume)", name, method, out_json)
                continue
            if method in entry["methods"]:
                forget_row(results["runs"], f"{name}/{method}", keep=this_run)
            if method in METHODS and METHODS[method].needs_images and not data.has_images:
                entry["skipped"][method] = "the dataset has no item images"
                continue
            if method in (SASREC, PRIOR, PRIORS) and data.sasrec is None:
                entry["skipped"][method] = "no SASRec model in the prepared data"
                continue
            elapsed = time.perf_counter() - start
            if args.time_budget_s is not None and elapsed > args.time_budget_s:
                entry["skipped"][method] = f"time budget of {args.time_budget_s:.0f} s spent ({elapsed:.0f} s)"
                continue
            logger.info("%s / %s: start (%.0f s elapsed)", name, method, elapsed)
            for row_name, (row_hits, row) in run_method(method, data, split, test, train, args).items():
                entry["methods"][row_name] = row
                if row_name != method:
                    forget_row(results["runs"], f"{name}/{row_name}", keep=this_run)
                    this_run["methods"].append(f"{name}/{row_name}")
                hits.setdefault(name, {})[row_name] = {
                    "rows": rows_fingerprint(test),
                    "hits": "".join("1" if h else "0" for h in row_hits),
                }
            write_json(args.out / HITS_FILE, hits)
            if "learning_curve" in entry["methods"][method]:
                entry["time_to_sasrec_s"] = entry["methods"][method]["learning_curve"]["time_to_sasrec_s"]
            this_run["methods"].append(f"{name}/{method}")
            entry["skipped"].pop(method, None)
            logger.info("%s / %s: %s", name, method, {k: entry["methods"][method][k] for k in METRIC_KEYS[:3]})
            results["wall_seconds"] = this_run["wall_seconds"] = round(time.perf_counter() - start, 1)
            write_outputs(results, args.out)
    results["wall_seconds"] = this_run["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_outputs(results, args.out)
    return results


def forget_row(runs: list[dict[str, Any]], row: str, keep: dict[str, Any]) -> None:
    """Takes a row that is being measured again out of the earlier runs that list it, and drops an earlier run left
    with no rows (all but `keep`, this run), so every row in the file is listed under the run that produced it."""
    for run in runs:
        if row in run["methods"]:
            run["methods"].remove(row)
    runs[:] = [run for run in runs if run["methods"] or run is keep]


# ----- outputs --------------------------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: VHR@1 of every method, one group per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dataset_names(results)
    measured = {m for n in names for m in results[n]["methods"]}
    methods = [m for m in METHOD_ORDER if m in measured] + sorted(measured - set(METHOD_ORDER))  # the table's order
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(methods)), 3.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [results[name]["methods"].get(m, {}).get("VHR@1") or 0.0 for m in methods]
        ax.bar(np.arange(len(methods)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(methods)) + width * (len(names) - 1) / 2, methods, rotation=30, ha="right")
    ax.set_ylabel("VHR@1 (SASRec: HR@1)")
    ax.set_title(f"Accuracy, {results.get('backbone')}, {results['machine']['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    for name in dataset_names(results):  # derived from the recorded points, so a fixed rule applies to old rows too
        curve = results[name]["methods"].get("speeder", {}).get("learning_curve")
        if curve:
            curve.update(time_to_sasrec(curve))
            results[name]["time_to_sasrec_s"] = curve["time_to_sasrec_s"]
    hits_file = out / HITS_FILE
    paired_tests(results, json.loads(hits_file.read_text()) if hits_file.is_file() else {})
    write_json(out / "accuracy.json", results)
    (out / "accuracy.md").write_text("\n".join(accuracy_section(results, "accuracy.png")) + "\n")
    try:
        plot(results, out / "accuracy.png")
        plot_curves(results, out / "accuracy_curve.png")
    except ImportError as error:  # a bare GPU image may lack matplotlib; the JSON is what matters
        logger.warning("No accuracy.png (%s); rerun with --plot_only where matplotlib exists.", error)


if __name__ == "__main__":
    main()
