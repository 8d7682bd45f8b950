"""A tiny finetune job (tiny data, LLM and text encoder folders) and the means to launch it in fresh processes
(`tests/finetune_job.py` under python, torchrun or accelerate) and read back what each process recorded. Shared
by the multi-process and the crash-resume tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from conftest import tiny_llm, tiny_tokenizer
from transformers import BertConfig, BertModel

JOB = Path(__file__).with_name("finetune_job.py")
SRC = Path(__file__).resolve().parents[1] / "src"
CPU_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp_cpu.yaml"
# Stages align (text), text (+ LoRA) and all (text + id) of 10, 10 and 20 optimizer steps, with checkpoints every 5
# steps and logs every 10: 40 steps of 2 rows a process, on 8 training rows (several epochs, negatives redrawn in
# each). A step of these models takes milliseconds; starting the interpreter takes seconds.
STAGES = {"stage-0-align": 10, "stage-1-text": 10, "stage-2-all": 20}
SAVE_STEPS = 5
TRAIN_ROWS = 8
_shared: dict[str, Path] = {}


def build_assets(root: Path) -> Path:
    """Writes under `root` a 12-user, 40-item dataset (S3Rec text format), a tiny Llama and a tiny BERT text
    encoder (each with its tokenizer) and returns `root`."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = random.Random(0)
    lines = [" ".join(map(str, [user, *rng.sample(range(1, 41), 7)])) for user in range(1, 13)]
    (data / "tiny.txt").write_text("\n".join(lines) + "\n")
    colours = ("red", "blue", "green", "pink")
    with open(data / "items.jsonl", "w") as f:
        for item in range(1, 41):
            title = f"{colours[item % 4]} lipstick {item}"
            f.write(json.dumps({"item_id": item, "title": title, "categories": [["Beauty"]]}) + "\n")
    tokenizer = tiny_tokenizer()
    llm = tiny_llm(vocab_size=len(tokenizer))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    )
    encoder.save_pretrained(root / "text-encoder")
    tokenizer.save_pretrained(root / "text-encoder")
    return root


def job_flags(assets: Path, output_dir: Path, cache: Path | None = None) -> list[str]:
    """The finetune flags of the tiny job (see `STAGES`), with its feature cache in `cache` (default
    `assets/cache`)."""
    return [
        *("--dataset", str(assets / "data"), "--output_dir", str(output_dir)),
        *("--llm", str(assets / "llm"), "--text_encoder", str(assets / "text-encoder")),
        *("--cache_dir", str(cache or assets / "cache"), "--modalities", "text,id"),
        *("--num_candidates", "5", "--max_history_len", "8", "--sasrec_epochs", "1", "--seed", "0"),
        *("--stage_steps", "10", "--final_stage_steps", "20", "--batch_size", "2"),
        *("--max_train_samples", str(TRAIN_ROWS), "--max_eval_samples", "4", "--eval_batch_size", "4"),
        *("--num_examples", "1", "--lora_r", "4"),
    ]


def job_environment(**extra: str) -> dict[str, str]:
    """The children's environment: offline, quiet, one thread each (2 cores shared), this checkout's sources
    first on the path (the launchers start new interpreters, which must not import another install)."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def two_process_launcher() -> list[str]:
    """`accelerate launch` with the shipped two-process CPU config (`examples/accelerate/ddp_cpu.yaml`; its
    processes need `ACCELERATE_USE_CPU=true` to form a gloo group). `--cpu --num_processes 2` would start one."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        *([str(accelerate)] if accelerate.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]),
        *("launch", "--config_file", str(CPU_CONFIG), "--main_process_port", str(free_port())),
    ]


def free_port() -> int:
    """A free TCP port on the loopback interface for the launcher's rendezvous (tests may run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(
    assets: Path,
    output_dir: Path,
    records: Path,
    *,
    processes: int = 1,
    resume: bool = False,
    kill_at: str | None = None,
    cache: Path | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """Runs the tiny job in fresh processes (`processes` 1: plain python; 2: accelerate launch, gloo); with
    `kill_at`, expects the job to die and checks that it did."""
    if processes == 1:
        command = [sys.executable, str(JOB)]
        extra = {}
    elif processes == 2:
        command = [*two_process_launcher(), str(JOB)]
        extra = {"ACCELERATE_USE_CPU": "true"}
    else:
        raise ValueError(f"processes must be 1 or 2, got {processes}.")
    if kill_at is not None:
        extra["SPEEDER_TEST_KILL_AT"] = kill_at
    flags = job_flags(assets, output_dir, cache) + (["--resume", "true"] if resume else [])
    result = subprocess.run(
        [*command, str(records), *flags],
        env=job_environment(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if kill_at is None:
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        # A SIGKILLed python exits with -9; the launcher, on a worker's death, with 1 (it reports the signal).
        killed = result.returncode == -signal.SIGKILL if processes == 1 else "Signal 9 (SIGKILL)" in result.stderr
        assert killed, f"the job was not killed at {kill_at} (exit {result.returncode}): {result.stderr[-3000:]}"
    return result


def read_records(records: Path) -> dict[int, list[dict[str, Any]]]:
    """Each process's recorded lines, by process index (from the file name)."""
    return {
        int(path.stem.split("-")[1]): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(records.glob("rank-*.jsonl"))
    }


def effective_steps(*launches: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """`(stage, step) -> step record` over consecutive launches of one run: a step redone after a resume replaces
    the one the kill made void (the checkpoint it resumed from predates it)."""
    steps: dict[tuple[str, int], dict[str, Any]] = {}
    for lines in launches:
        for line in lines:
            if line["kind"] == "step":
                steps[(line["stage"], line["step"])] = line
    return steps


def epoch_draws(lines: list[dict[str, Any]]) -> dict[tuple[str, int], dict[int, list[int]]]:
    """`(stage, epoch) -> {row index: candidates}` of the rows a process drew."""
    draws: dict[tuple[str, int], dict[int, list[int]]] = defaultdict(dict)
    for line in lines:
        if line["kind"] == "draw":
            draws[(line["stage"], line["epoch"])][line["index"]] = line["candidates"]
    return draws


def trainable_state(output_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    """What stage `stage` of the run in `output_dir` saved as its final trainable state (LoRA adapter with the
    MRC / SPAE / head copies, or the full model before LoRA)."""
    folder = output_dir / "mpo" / stage / "final"
    (weights,) = [p for p in (folder / "adapter_model.safetensors", folder / "model.safetensors") if p.is_file()]
    return safetensors.torch.load_file(weights)


def reference_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The tiny job's assets, and the output folder and records of its uninterrupted one-process run: built once
    per test session, for every test that compares against it."""
    if not _shared:
        root = tmp_path_factory.mktemp("finetune-job")
        assets = build_assets(root / "assets")
        run_job(assets, root / "reference", root / "reference-records")
        _shared.update(assets=assets, output=root / "reference", records=root / "reference-records")
    return _shared["assets"], _shared["output"], _shared["records"]


def stage_log(output_dir: Path, stage: str) -> list[dict[str, Any]]:
    """The log history of a stage, from its last checkpoint's `trainer_state.json` (it carries the whole stage's
    history, across resumes)."""
    (checkpoint,) = (output_dir / "mpo" / stage).glob("checkpoint-*")  # save_total_limit=1
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
