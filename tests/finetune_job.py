"""The finetune job (`speeder_hf_train.finetune.run_finetune`) with test instrumentation, as a script that the
multi-process and crash-resume tests launch under plain `python`, `torchrun` or `accelerate launch`.

    python tests/finetune_job.py RECORD_DIR [FinetuneArguments flags ...]

Each process appends JSON lines to `RECORD_DIR/rank-<process index>.jsonl`, written straight to the file so that
a SIGKILL loses none of them:

- `{"kind": "step", ...}` before every optimizer step: the stage folder, the global step before it, the world size
  and backend the accelerator reports, the batch's size and a hash of its inputs, and afterwards its loss;
- `{"kind": "draw", ...}` for every training row the dataset builds: stage, epoch, row index and its candidates;
- `{"kind": "sasrec_trained"}` for every SASRec the process trains (rather than loads from the feature cache).

`SPEEDER_TEST_KILL_AT="<stage folder>:<step>"` SIGKILLs every process right after optimizer step `<step>` of that
stage (before that step's checkpoint, if it has one); `"<stage folder>:<step>:save"` SIGKILLs them in the middle of
that step's checkpoint save: after the weights and optimizer, before `trainer_state.json`. When the job ends, each
process writes its results to `RECORD_DIR/results-<process index>.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainerCallback

from speeder_hf.data import CandidateSamplingDataset
from speeder_hf.training.trainer import SpeederTrainer
from speeder_hf_train import finetune

RECORD_DIR = Path(sys.argv[1])
KILL_AT = os.environ.get("SPEEDER_TEST_KILL_AT", "")
# Set by torchrun and accelerate launch; read before the accelerator exists (the dataset draws rows first).
RANK = int(os.environ.get("RANK", "0"))
current_stage = {"name": None}


def record(payload: dict[str, Any]) -> None:
    """One unbuffered line (os.write): the kernel keeps what a SIGKILL cuts the Python process short of."""
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(RECORD_DIR / f"rank-{RANK}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(payload) + "\n").encode())
    finally:
        os.close(fd)


def kill_point() -> tuple[str, int, bool] | None:
    """`(stage folder, step, during the save)` from `SPEEDER_TEST_KILL_AT`, or None."""
    if not KILL_AT:
        return None
    stage, step, *where = KILL_AT.split(":")
    return stage, int(step), where == ["save"]


class KillAfterStep(TrainerCallback):
    """SIGKILLs the process after the optimizer step named by `SPEEDER_TEST_KILL_AT` (no `:save` suffix)."""

    def on_step_end(self, args, state, control, **kwargs):
        point = kill_point()
        if point and not point[2] and Path(args.output_dir).name == point[0] and state.global_step == point[1]:
            record({"kind": "killed", "stage": point[0], "step": point[1], "during_save": False})
            os.kill(os.getpid(), signal.SIGKILL)


class StageName(TrainerCallback):
    """Tells the dataset's recorder which stage is drawing rows (the stage folder, like the step records)."""

    def on_train_begin(self, args, state, control, **kwargs):
        current_stage["name"] = Path(args.output_dir).name


original_training_step = SpeederTrainer.training_step
original_save_rng_state = SpeederTrainer._save_rng_state
original_getitem = CandidateSamplingDataset.__getitem__
original_run_mpo = finetune.run_mpo
original_train_sasrec = finetune.train_sasrec


def training_step(self: SpeederTrainer, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
    """`SpeederTrainer.training_step`, recording the step (its batch before, its loss after)."""
    # The batch's identity: its prompts (history and candidates as tokens) and the items spliced into them.
    batch = b"".join(inputs[key].cpu().numpy().tobytes() for key in ("input_ids", "item_ids"))
    step = {
        "kind": "step",
        "stage": Path(self.args.output_dir).name,
        "step": self.state.global_step,  # optimizer steps done in this stage before this one
        "num_processes": self.accelerator.num_processes,
        "process_index": self.accelerator.process_index,
        "backend": str(self.accelerator.state.backend),
        "batch": hashlib.sha256(batch).hexdigest()[:16],
        "rows": int(inputs["input_ids"].shape[0]),
    }
    loss = original_training_step(self, model, inputs, *args, **kwargs)
    record({**step, "loss": float(loss.detach())})
    return loss


def save_rng_state(self: SpeederTrainer, output_dir: str) -> None:
    """`Trainer._save_rng_state`, the save's last part before `trainer_state.json`: where a `:save` kill point
    strikes."""
    point = kill_point()
    if point and point[2] and Path(self.args.output_dir).name == point[0] and self.state.global_step == point[1]:
        record({"kind": "killed", "stage": point[0], "step": point[1], "during_save": True})
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save_rng_state(self, output_dir)


def getitem(self: CandidateSamplingDataset, index: int) -> dict[str, Any]:
    """`CandidateSamplingDataset.__getitem__`, recording the row's epoch and negatives."""
    row = original_getitem(self, index)
    record(
        {
            "kind": "draw",
            "stage": current_stage["name"],
            "epoch": self.epoch,
            "index": int(index),
            "candidates": list(row["candidates"]),
        }
    )
    return row


def train_sasrec(*args: Any, **kwargs: Any):
    """`train_sasrec` as the job calls it, recording that this process trained one."""
    record({"kind": "sasrec_trained"})
    return original_train_sasrec(*args, **kwargs)


def run_mpo(*args: Any, callbacks: list[TrainerCallback] | None = None, **kwargs: Any):
    """`run_mpo` as the job calls it, with the recording and killing callbacks added."""
    return original_run_mpo(*args, callbacks=[StageName(), KillAfterStep(), *(callbacks or [])], **kwargs)


def main() -> None:
    """Patches the job's training, saving and data drawing with the recorders, then runs it on the flags."""
    SpeederTrainer.training_step = training_step
    SpeederTrainer._save_rng_state = save_rng_state
    CandidateSamplingDataset.__getitem__ = getitem
    finetune.run_mpo = run_mpo
    finetune.train_sasrec = train_sasrec
    (args,) = HfArgumentParser(finetune.FinetuneArguments).parse_args_into_dataclasses(sys.argv[2:])
    results = finetune.run_finetune(args)
    (RECORD_DIR / f"results-{RANK}.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
