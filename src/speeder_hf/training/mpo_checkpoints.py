"""MPO's progress on disk: where each stage writes (`stage-<i>-<name>/`, its checkpoints with an `mpo_state.json`,
`final/` and a done marker), and how an interrupted run finds the stage and checkpoint to continue from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import safetensors.torch
import torch
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint, load_sharded_checkpoint, sort_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .mpo_schedule import Stage

logger = logging.getLogger(__name__)

STATE_FILE = "mpo_state.json"
DONE_FILE = "mpo_stage_done.json"
FINAL_DIR = "final"


def stage_folder(index: int, stage: Stage) -> str:
    """The folder, under the run's `output_dir`, where `run_mpo` writes stage `index` (checkpoints, `final/`, the
    done marker)."""
    return f"stage-{index}-{stage.name}"


def resume_point(
    root: Path, stages: list[Stage], runnable: list[int], resume_from_checkpoint: bool | str
) -> tuple[int, Path | None]:
    """The index of the stage to continue and the checkpoint to continue it from (None: start it afresh)."""
    done = []
    for index in runnable:
        marker = root / stage_folder(index, stages[index]) / DONE_FILE
        if not marker.is_file():
            break
        recorded = json.loads(marker.read_text())
        if recorded.get("stage_name") != stages[index].name:
            raise ValueError(f"{marker} belongs to stage {recorded.get('stage_name')!r}, not {stages[index].name!r}.")
        done.append(index)

    if not isinstance(resume_from_checkpoint, bool):
        checkpoint = Path(resume_from_checkpoint)
        if not (checkpoint / STATE_FILE).is_file():
            raise ValueError(f"{checkpoint} has no {STATE_FILE}: it is not a checkpoint written by run_mpo.")
        state = json.loads((checkpoint / STATE_FILE).read_text())
        index = state["stage_index"]
        if index >= len(stages) or stages[index].name != state["stage_name"]:
            raise ValueError(f"{checkpoint} belongs to stage {index} {state['stage_name']!r}, not in this schedule.")
        unfinished = [i for i in runnable if i < index and i not in done]
        if unfinished:
            raise ValueError(
                f"Cannot resume stage {index} from {checkpoint}: earlier stages {unfinished} are not done."
            )
        return index, checkpoint

    pending = [i for i in runnable if i not in done]
    if not pending:
        return len(stages), None
    index = pending[0]
    stage_dir = root / stage_folder(index, stages[index])
    last = last_complete_checkpoint(stage_dir)
    if last is None and not done:
        raise ValueError(f"resume_from_checkpoint=True but {root} holds no finished MPO stage and no checkpoint.")
    if last is not None and (last / STATE_FILE).is_file():
        state = json.loads((last / STATE_FILE).read_text())
        if state["stage_index"] != index or state["stage_name"] != stages[index].name:
            raise ValueError(f"{last} records stage {state['stage_index']} {state['stage_name']!r}, expected {index}.")
    return index, last


def has_progress(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a run that `run_mpo(..., resume_from_checkpoint=True)` can continue: a finished
    stage or a checkpoint whose save completed."""
    stage_dirs = [d for d in Path(output_dir).glob("stage-*") if d.is_dir()]
    return any((d / DONE_FILE).is_file() or last_complete_checkpoint(d) is not None for d in stage_dirs)


def last_complete_checkpoint(stage_dir: Path) -> Path | None:
    """The latest checkpoint in `stage_dir` whose save finished: the Trainer's own `get_last_checkpoint`, checked
    for completeness. The Trainer writes `trainer_state.json` after the weights and optimizer and before it deletes
    older checkpoints, so a save cut short by a kill lacks it and the previous checkpoint is still there: the
    earlier ones are tried next, newest first."""
    if not stage_dir.is_dir():
        return None
    latest = get_last_checkpoint(str(stage_dir))
    if latest is None:
        return None
    earlier = [Path(p) for p in reversed(sort_checkpoints(str(stage_dir))) if Path(p) != Path(latest)]
    for checkpoint in [Path(latest), *earlier]:
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            return checkpoint
        logger.warning("MPO: %s is incomplete (its save was interrupted); trying an earlier checkpoint.", checkpoint)
    return None


def load_final(model, folder: Path) -> None:
    """Loads a finished stage's saved state into `model` (adapter + MRC/SPAE for PEFT, else the full model)."""
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        unexpected = result.unexpected_keys
    elif (folder / SAFE_WEIGHTS_NAME).is_file():
        result = model.load_state_dict(safetensors.torch.load_file(folder / SAFE_WEIGHTS_NAME), strict=False)
        unexpected = result.unexpected_keys
        _check_only_tied_missing(model, result.missing_keys, folder)
    elif (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        result = load_sharded_checkpoint(model, str(folder), strict=False)
        unexpected = result.unexpected_keys
        _check_only_tied_missing(model, result.missing_keys, folder)
    else:
        raise FileNotFoundError(f"No saved stage weights ({SAFE_WEIGHTS_NAME} or an adapter) in {folder}.")
    if unexpected:
        raise ValueError(f"Weights in {folder} do not fit the model: unexpected keys {unexpected[:5]}.")


def _check_only_tied_missing(model: torch.nn.Module, missing: list[str], folder: Path) -> None:
    # save_pretrained leaves out tied duplicates (lm_head tied to the input embeddings); anything else is an error.
    state = model.state_dict()
    loaded_ptrs = {t.data_ptr() for k, t in state.items() if k not in missing}
    untied = [k for k in missing if state[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"Weights in {folder} lack keys {untied[:5]}.")


__all__ = ["DONE_FILE", "FINAL_DIR", "STATE_FILE", "has_progress", "load_final", "resume_point", "stage_folder"]
