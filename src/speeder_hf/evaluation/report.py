"""The evaluation report of a trained model: what the job measured, saved beside the model as `eval_results.json`.

`speeder_hf_train.finetune.run_finetune` writes it, the model card (`speeder_hf.hub.model_card.build_model_card`) is
filled from it, `speeder_hf.hub.publishing.publish_folder` uploads it, and the web demo (`speeder_hf_train.app`)
shows its example users. [`EvaluationReport`] is its one typed form; the JSON file keeps the flat layout it always
had, so files written before the report was typed load unchanged, and keys it does not know are kept and written
back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..catalog.item_catalog import ItemCatalog

# The report's file name beside a saved model.
RESULTS_FILE = "eval_results.json"


@dataclass
class EvaluationReport:
    """What the job measured and how, for the card and the web demo.

    Args:
        dataset: the dataset's name (`RecDataset.name`), which the card maps to its citation.
        split: the evaluated split, `test` or `validation`.
        metrics: the output of `speeder_hf.evaluation.ranking.evaluate_ranking`.
        mpo_stages: the MPO stages trained, as `dataclasses.asdict(Stage)`.
        train_samples_seen: training samples over all optimizer steps and processes.
        train_seconds: the time in `run_mpo`.
        machine: the hardware, in words.
        examples: example users (see [`card_examples`]): `user_id`, `history` and `target` as item ids.
        wall_seconds: the whole job's time, features, SASRec, evaluation and saving included.
        priors: how the collaborative and content priors were set and fitted.
        command: the command line that ran the job.
        arguments: the job's arguments (`dataclasses.asdict(FinetuneArguments)`).
        date: the day of the run, `YYYY-MM-DD`.
        baselines: `{name: metrics}` of other models on the same users and candidates.
        base_model: the backbone's Hub id, where the arguments do not tell it.
        split_strategy: how the evaluated users' targets were chosen, a key of
            `speeder_hf.data.STRATEGY_TARGETS` (`make_split`'s strategy).
        extra: keys of the file that the report does not know, kept so that it is written back as it was read.
    """

    dataset: str
    split: str
    metrics: dict[str, Any]
    mpo_stages: list[dict[str, Any]]
    train_samples_seen: int
    train_seconds: float
    machine: str
    examples: list[dict[str, Any]]
    wall_seconds: float | None = None
    priors: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    date: str | None = None
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_model: str | None = None
    split_strategy: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON object of the results file: optional fields that are unset are left out."""
        payload: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name not in REQUIRED and value in (None, {})):
                continue
            payload[f.name] = value
        return {**payload, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the evaluation results") -> EvaluationReport:
        """The report of a parsed results file.

        Raises:
            ValueError: a required key is missing; the message names `source`.
        """
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise ValueError(f"{source} lacks {missing}; it must be the eval_results.json written by run_finetune.")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        # A file may hold `null` for an optional dict (it was written by hand, say): treat it as unset.
        values = {key: value for key, value in values.items() if value is not None or key in REQUIRED}
        return cls(**values, extra={key: value for key, value in data.items() if key not in known})

    def to_json(self, indent: int | None = 2) -> str:
        """The results file's text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, source: str = "the evaluation results") -> EvaluationReport:
        """The report of a results file's text (see [`from_dict`])."""
        return cls.from_dict(json.loads(text), source)

    def save(self, path: str | Path) -> Path:
        """Writes the report to `path` (a file, or a model folder to write `eval_results.json` in)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvaluationReport:
        """The report in `path` (a file, or a model folder holding `eval_results.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))


# The keys a results file must have: the report's fields without a default.
REQUIRED = tuple(f.name for f in fields(EvaluationReport) if f.default is MISSING and f.default_factory is MISSING)


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The example users of a results file, and nothing else of it: the web demo needs no metrics, so it also
    serves a model whose results file holds only `examples`."""
    return list(json.loads(Path(path).read_text(encoding="utf-8")).get("examples") or [])


def card_examples(rows: Sequence[dict[str, Any]], catalog: ItemCatalog, n: int = 3) -> list[dict[str, Any]]:
    """Example users for the card and the web demo, from evaluation rows (`user_id`, `history`, `target` as catalog
    rows): their history and true next item as external ids. Store them as the report's `examples`."""
    examples = []
    for row in list(rows)[:n]:
        examples.append(
            {
                "user_id": str(row["user_id"]),
                "history": [catalog.item_ids[i] for i in row["history"]],
                "target": catalog.item_ids[row["target"]],
            }
        )
    return examples


__all__ = ["RESULTS_FILE", "EvaluationReport", "card_examples", "read_examples"]
