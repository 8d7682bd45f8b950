"""`SpeederTrainer`: a `transformers.Trainer` that keeps collator metadata away from the model and logs the MRC
gate's routing per modality, the MPO stage and the training throughput."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..processing.collator import SpeederDataCollator

# Columns the collator may emit for ranking evaluation; they describe the batch, the model never takes them.
METADATA_KEYS = SpeederDataCollator.METADATA_KEYS
# Output fields that are not predictions: never gathered into `EvalPrediction.predictions`.
NON_PREDICTION_KEYS = ["cache", "past_key_values", "gate_weights", "aux_loss", "hidden_states", "attentions"]


class SpeederTrainer(Trainer):
    """`transformers.Trainer` for [`SpeederForSequentialRec`] (plain or wrapped by PEFT).

    - Drops the collator's metadata keys (`candidate_items`, `target_index`, `history_len`) before the forward.
    - Forwards `num_items_in_batch` to the model, whose inner LM normalises its loss by it (correct under gradient
      accumulation).
    - Adds to every training log: `gate/<modality>` (mean MRC gate weight over the item slots seen since the last
      log, 0 for inactive modalities), `mpo_stage` (the stage name, when set) and
      `throughput/samples_per_second`, so they reach TensorBoard and every other `report_to` integration.

    Args:
        stage_name: name of the MPO stage this trainer runs, logged with each training log.
        *args, **kwargs: as for `transformers.Trainer`. `args.remove_unused_columns` must be False, because the
            model's item inputs (`item_ids`, `item_recency`, ...) are not in the dataset's columns.
    """

    def __init__(self, *args: Any, stage_name: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError(
                "SpeederTrainer needs TrainingArguments(remove_unused_columns=False): the collator builds the model "
                "inputs (item_ids, item_recency, labels) from raw columns that the model's signature does not name."
            )
        self.stage_name = stage_name
        self.modalities = list(self.model.config.modalities)
        # Per-modality gate-weight sums, then the slot and sample counts, since the last training log.
        self._window_stats = torch.zeros(len(self.modalities) + 2, dtype=torch.float64)
        self._window_start: float | None = None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = drop_metadata(inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            self._record(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        ignore_keys = NON_PREDICTION_KEYS if ignore_keys is None else ignore_keys
        return super().prediction_step(model, drop_metadata(inputs), prediction_loss_only, ignore_keys=ignore_keys)

    def _record(self, outputs: Any, inputs: dict[str, Any]) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        stats = torch.zeros_like(self._window_stats)
        gate_weights = outputs.get("gate_weights") if isinstance(outputs, dict) else None
        if gate_weights is not None:
            stats[: len(self.modalities)] = gate_weights.detach().double().sum(dim=0).cpu()  # (n_slots, M) -> (M,)
            stats[-2] = gate_weights.shape[0]
        stats[-1] = inputs["input_ids"].shape[0]
        self._window_stats += stats

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            logs.update(self._window_logs())
        super().log(logs, *args, **kwargs)

    def _window_logs(self) -> dict[str, float | str]:
        """Gate means and throughput over all processes since the last training log; resets the window."""
        stats = self._window_stats.to(self.args.device, torch.float32)
        stats = self.accelerator.reduce(stats, reduction="sum").cpu()
        elapsed = time.perf_counter() - self._window_start if self._window_start is not None else 0.0
        self._window_stats.zero_()
        self._window_start = None
        logs: dict[str, float | str] = {}
        if self.stage_name is not None:
            logs["mpo_stage"] = self.stage_name
        slots, samples = float(stats[-2]), float(stats[-1])
        if slots > 0:
            logs.update({f"gate/{m}": float(stats[i]) / slots for i, m in enumerate(self.modalities)})
        if elapsed > 0:
            logs["throughput/samples_per_second"] = round(samples / elapsed, 3)
        return logs


def drop_metadata(inputs: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of `inputs` without the collator's metadata keys."""
    return {key: value for key, value in inputs.items() if key not in METADATA_KEYS}


__all__ = ["METADATA_KEYS", "SpeederTrainer", "drop_metadata"]
