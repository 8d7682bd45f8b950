"""Training a benchmark method over several sittings: a run killed mid-training continues from its last checkpoint
in its work folder, and its training time adds up over the sittings (`sittings.json` beside the checkpoints)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from speeder_hf.json_files import write_json
from speeder_hf.training.mpo import has_progress

from .bookkeeping import machine_description

logger = logging.getLogger("benchmarks.sittings")

SITTINGS_FILE = "sittings.json"


def start_sitting(work: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Opens a training sitting in `work`: the next one of a run left there with the same settings and at least one
    checkpoint (with `resume`), else a fresh run (the folder is emptied). Returns the updated `sittings.json`."""
    record_file = work / SITTINGS_FILE
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if resume and record is not None and record["settings"] == settings and has_progress(work):
        record["sittings"] += 1
        logger.info(
            "%s: continuing sitting %d (%.0f s trained so far)", work, record["sittings"], record["train_seconds"]
        )
    else:
        if resume and record is not None:
            logger.info("%s: settings changed or no checkpoint yet; training from the start", work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        commit = machine_description()["git_commit_at_start"]
        record = {"settings": settings, "commit": commit, "sittings": 1, "train_seconds": 0.0}
    write_json(record_file, record)
    return record


class TrainClock(TrainerCallback):
    """Training seconds over all sittings: at each checkpoint it writes the total so far into `sittings.json`, so
    a continued run adds its own time to what the checkpoint had cost (steps redone after a kill count once).
    `finish` fixes the totals when training is over, so a sitting that only continues the evaluation adds nothing."""

    def __init__(self, record_file: Path, earlier_seconds: float):
        self.record_file, self.earlier = record_file, earlier_seconds
        self.start = time.perf_counter()
        self.took_part = False  # a stage's training ran (or was completed) in this sitting

    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.start

    def on_train_begin(self, args, state, control, **kwargs):
        self.took_part = True

    def on_save(self, args, state, control, **kwargs):
        record = json.loads(self.record_file.read_text())
        write_json(self.record_file, {**record, "train_seconds": round(self.seconds(), 1)})

    def finish(self) -> dict[str, Any]:
        """Records the training time and the sittings training took (when this sitting trained, or training had not
        been recorded as finished), and returns `sittings.json`."""
        record = json.loads(self.record_file.read_text())
        if self.took_part or "trained_in_sittings" not in record:
            record.update(train_seconds=round(self.seconds(), 1), trained_in_sittings=record["sittings"])
            write_json(self.record_file, record)
        return record
