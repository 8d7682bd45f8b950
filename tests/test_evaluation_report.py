"""The evaluation report saved beside a model: its JSON round trip, and results files written before it was typed."""

from __future__ import annotations

import json

import pytest

from speeder_hf.evaluation.report import RESULTS_FILE, EvaluationReport, read_examples

# A results file as the job wrote it before the report was typed: a flat JSON object, with a key the report does
# not know (kept and written back).
OLD_FILE = {
    "dataset": "Beauty",
    "split": "test",
    "metrics": {"VHR@1": 0.25, "num_samples": 4, "protocol": "5 candidates"},
    "priors": {"mode": "after_training", "weights": {"sasrec": 1.0}},
    "train_samples_seen": 48,
    "mpo_stages": [{"name": "align", "modalities": ["text"], "train": ["mrc"], "learning_rate": 0.001}],
    "train_seconds": 3.0,
    "wall_seconds": 9.0,
    "machine": "x86_64 CPU, 2 threads",
    "command": "python examples/finetune.py",
    "arguments": {"llm": "smollm2", "batch_size": 8},
    "date": "2026-11-27",
    "baselines": {"SASRec": {"HR@1": 0.2}},
    "examples": [{"user_id": "u0", "history": ["a", "b"], "target": "c"}],
    "notes": "written by an older job",
}


def test_an_old_results_file_loads_and_is_written_back_unchanged(tmp_path):
    (tmp_path / RESULTS_FILE).write_text(json.dumps(OLD_FILE, indent=2))
    report = EvaluationReport.load(tmp_path)  # a model folder: its eval_results.json
    assert report.metrics["VHR@1"] == 0.25 and report.baselines == {"SASRec": {"HR@1": 0.2}}
    assert report.wall_seconds == 9.0 and report.date == "2026-11-27" and report.base_model is None
    assert report.extra == {"notes": "written by an older job"}
    assert json.loads(report.to_json()) == OLD_FILE
    assert EvaluationReport.from_json(report.to_json()) == report
    assert read_examples(tmp_path / RESULTS_FILE) == OLD_FILE["examples"]


def test_optional_fields_may_be_missing_and_are_left_out_when_unset():
    required = {key: OLD_FILE[key] for key in ("dataset", "split", "metrics", "mpo_stages", "machine", "examples")}
    report = EvaluationReport.from_dict({**required, "train_samples_seen": 0, "train_seconds": 0.0})
    assert report.wall_seconds is None and report.baselines == {} and report.arguments == {}
    assert set(report.to_dict()) == {*required, "train_samples_seen", "train_seconds"}


def test_a_file_without_a_required_key_is_refused_by_name(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({key: value for key, value in OLD_FILE.items() if key != "metrics"}))
    with pytest.raises(ValueError, match=r"results.json lacks \['metrics'\]"):
        EvaluationReport.load(path)


def test_save_writes_the_results_file_in_a_model_folder(tmp_path):
    report = EvaluationReport.from_dict(OLD_FILE)
    assert report.save(tmp_path) == tmp_path / RESULTS_FILE
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == OLD_FILE
