"""The learning curve of a benchmark method: validation VHR@1 as it trains, against training samples and seconds,
and the first point above SASRec (`time_to_sasrec_s`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from speeder_hf.training.fusion_weights import fit_fusion_weights
from speeder_hf.training.prior_calibration import candidate_scores, prior_inputs

from .bench_data import BenchData
from .report import dataset_names
from .sittings import TrainClock


class LearningCurve(TrainerCallback):
    """Validation VHR@1 of the model being trained, as it would be deployed: its prior reading the full SASRec, or,
    for a model trained without one, fused with it at a weight cross-fitted over the curve users. Measured before
    training, every `every` optimizer steps and at each stage's end, on fixed validation users, against the
    training samples seen and the training seconds so far (this evaluation's own time left out). `summary` gives
    the first point above SASRec's HR@1 on the same users (`time_to_sasrec_s`)."""

    def __init__(
        self,
        tokenizer,
        data: BenchData,
        rows,
        clock: TrainClock,
        every: int,
        samples_per_step: int,
        modalities: Sequence[str] | None = None,
    ):
        self.tokenizer, self.data = tokenizer, data
        self.clock, self.every, self.samples_per_step = clock, every, samples_per_step
        self.points: list[dict[str, Any]] = []
        self.spent = 0.0  # seconds of curve evaluation, not training
        self.rows = [dict(row) for row in rows]
        # For a model without a prior in training: the priors' features of the same candidates, to fuse with.
        fusion = data.priors(modalities)
        history, candidates, self.targets = prior_inputs(self.rows, fusion.history_len)  # (N, L), (N, C), (N,)
        self.fusion = fusion.features(history, candidates)  # (N, C, K)
        self.valid = candidates >= 0
        self.steps_done = 0  # optimizer steps over all stages
        self.samples_before = 0  # samples of the finished stages

    def measure(self, model, samples: int) -> None:
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        # Measured as it would be deployed: the prior reads the full SASRec (training's reads the held-out one).
        prior = getattr(model, "collaborative_prior", None)
        held = None
        if prior is not None and self.data.held_out_sasrec is not None:
            held = {key: value.clone() for key, value in prior.sasrec.state_dict().items()}
            prior.sasrec.load_state_dict(self.data.sasrec.state_dict())
        try:
            scores = self.scores(model)  # (N, C)
        finally:
            if held is not None:
                prior.sasrec.load_state_dict(held)
            model.train(was_training)
        point = {"train_samples": samples, "VHR@1": float((scores.argmax(1) == self.targets).double().mean())}
        if prior is None:
            point["llm_VHR@1"], point["VHR@1"] = point["VHR@1"], self.fused_hr1(scores)
        self.spent += time.perf_counter() - started
        self.points.append({**point, "train_seconds": round(self.clock.seconds() - self.spent, 1)})

    def scores(self, model) -> torch.Tensor:
        """The model's candidate scores `(N, C)` of the curve users, candidates in row order."""
        titles, texts = self.data.catalog.titles, self.data.catalog.texts
        return candidate_scores(model, self.tokenizer, self.rows, titles, texts, batch_size=64).cpu()

    def fused_hr1(self, llm_scores: torch.Tensor) -> float:
        """HR@1 of the LLM's and the priors' scores with their weights cross-fitted over two halves of the curve
        users (fitted on one half, measured on the other), so no user's own outcome sets its weights."""
        halves = torch.arange(len(self.targets)) % 2 == 0
        hits = torch.zeros(len(self.targets), dtype=torch.bool)
        features = torch.cat([llm_scores.float()[..., None], self.fusion], -1)  # (N, C, 1 + P)
        for fit, measured in ((halves, ~halves), (~halves, halves)):
            weights = fit_fusion_weights(features[fit], self.targets[fit], self.valid[fit])
            fused = features[measured].double() @ weights
            hits[measured] = fused.argmax(1) == self.targets[measured]
        return float(hits.double().mean())

    def seen(self, state, train_dataloader) -> int:
        """Samples trained on so far: the finished stages' and this stage's steps (its last batch may be short)."""
        return self.samples_before + min(state.global_step * self.samples_per_step, len(train_dataloader.dataset))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.points:
            self.measure(model, 0)

    def on_step_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.steps_done += 1
        if self.steps_done % self.every == 0:
            self.measure(model, self.seen(state, train_dataloader))

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        samples = self.seen(state, train_dataloader)
        if self.points[-1]["train_samples"] != samples:
            self.measure(model, samples)
        self.samples_before = samples

    def summary(self, reference: float) -> dict[str, Any]:
        curve = {"validation_users": len(self.rows), "sasrec_validation_HR@1": reference, "points": self.points}
        return {**curve, **time_to_sasrec(curve)}


def time_to_sasrec(curve: dict[str, Any]) -> dict[str, Any]:
    """The first curve point above SASRec's validation HR@1: its training seconds and samples (None: never).
    Rates over the same users are compared as hit counts, so an equal rate never passes by float rounding."""
    users = curve["validation_users"]
    reference = round(curve["sasrec_validation_HR@1"] * users)
    passed = next((p for p in curve["points"] if round(p["VHR@1"] * users) > reference), None)
    return {
        "time_to_sasrec_s": passed["train_seconds"] if passed else None,
        "samples_to_sasrec": passed["train_samples"] if passed else None,
    }


def plot_curves(results: dict[str, Any], path: Path) -> bool:
    """Validation VHR@1 of the speeder row against training seconds, with SASRec's level, one panel per dataset;
    False when no row has a curve."""
    curves = {n: results[n]["methods"]["speeder"]["learning_curve"] for n in dataset_names(results)
              if "learning_curve" in results[n]["methods"].get("speeder", {})}  # fmt: skip
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items()):
        seconds = [p["train_seconds"] for p in curve["points"]]
        ax.plot(seconds, [p["VHR@1"] for p in curve["points"]], marker="o", label="Speeder")
        if all("llm_VHR@1" in p for p in curve["points"]):
            ax.plot(seconds, [p["llm_VHR@1"] for p in curve["points"]], marker=".", label="its LLM alone (no prior)")
        ax.axhline(curve["sasrec_validation_HR@1"], color="gray", linestyle="--", label="SASRec")
        ax.set_xlabel("training seconds")
        ax.set_ylabel(f"validation VHR@1 ({curve['validation_users']} users)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
