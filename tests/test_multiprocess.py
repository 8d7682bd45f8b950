"""The finetune job under two gloo CPU processes (`accelerate launch` with `examples/accelerate/ddp_cpu.yaml`, as
docs/training.md shows): MPO's stages, per-epoch negatives, logs and the saved bundle agree with a one-process run's
bookkeeping, and a run killed mid-stage resumes under two processes to the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_runs import (
    STAGES,
    TRAIN_ROWS,
    effective_steps,
    epoch_draws,
    read_records,
    reference_run,
    run_job,
    stage_log,
    trainable_state,
)

from speeder_hf.serving.recommend import Recommender
from speeder_hf_train.arguments import FinetuneArguments
from speeder_hf_train.finetune import mpo_training_args

KILL_AT = "stage-1-text:7"  # mid-stage, two steps after its checkpoint-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference, an uninterrupted two-process run (with a cold feature cache of its own: the
    first process fills it, the second reads it) and a two-process run killed mid-stage, then resumed."""
    assets, one, one_records = reference_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("two-processes")
    run_job(assets, root / "two", root / "two-records", processes=2, cache=root / "cache")
    run_job(assets, root / "killed", root / "killed-records", processes=2, kill_at=KILL_AT)
    killed_stage = root / "killed" / "mpo" / "stage-1-text"
    interrupted = {
        "checkpoints": sorted(p.name for p in killed_stage.glob("checkpoint-*")),
        "done": (killed_stage / "mpo_stage_done.json").exists(),
    }
    run_job(assets, root / "killed", root / "resumed-records", processes=2, resume=True)
    return {
        "one": (one, read_records(one_records)),
        "two": (root / "two", read_records(root / "two-records")),
        "killed": read_records(root / "killed-records"),
        "interrupted": interrupted,
        "resumed": (root / "killed", read_records(root / "resumed-records")),
    }


def test_two_gloo_processes_really_ran(runs):
    _, two = runs["two"]
    assert sorted(two) == [0, 1]  # each process wrote its own records
    for rank, lines in two.items():
        steps = [line for line in lines if line["kind"] == "step"]
        assert steps and all(s["num_processes"] == 2 and s["process_index"] == rank for s in steps)
        assert {s["backend"] for s in steps} == {"gloo"}
    _, one = runs["one"]
    assert sorted(one) == [0] and all(s["num_processes"] == 1 for s in one[0] if s["kind"] == "step")


def test_the_first_process_builds_the_catalog_and_the_second_reads_its_cache(runs):
    _, two = runs["two"]
    trained = {rank: sum(line["kind"] == "sasrec_trained" for line in lines) for rank, lines in two.items()}
    assert trained == {0: 2, 1: 0}  # the SASRec of every training item and the held-out one, trained once


def test_processes_that_form_no_group_are_refused(tmp_path, monkeypatch):
    """What a launcher's processes see on a machine without GPUs when ACCELERATE_USE_CPU is not set: a world size
    of 2 in the environment, and a process group of one."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(RuntimeError, match="set ACCELERATE_USE_CPU=true"):
        mpo_training_args(FinetuneArguments(output_dir=str(tmp_path)))


def test_same_stages_and_optimizer_steps_per_stage(runs):
    (one_dir, one), (two_dir, two) = runs["one"], runs["two"]
    expected = [(stage, step) for stage, count in STAGES.items() for step in range(count)]
    assert list(effective_steps(one[0])) == expected
    for rank in (0, 1):
        assert list(effective_steps(two[rank])) == expected
    for stage, count in STAGES.items():
        for output in (one_dir, two_dir):
            marker = json.loads((output / "mpo" / stage / "mpo_stage_done.json").read_text())
            assert marker["global_step"] == count
    one_results = json.loads((one_dir / "eval_results.json").read_text())
    two_results = json.loads((two_dir / "eval_results.json").read_text())
    assert two_results["mpo_stages"] == one_results["mpo_stages"]
    # Each optimizer step reads a batch in each process.
    assert two_results["train_samples_seen"] == 2 * one_results["train_samples_seen"] == 2 * 40 * 2


def test_two_processes_share_one_data_order_and_the_per_epoch_negatives(runs):
    (_, one), (_, two) = runs["one"], runs["two"]
    one_draws, rank_draws = epoch_draws(one[0]), [epoch_draws(two[r]) for r in (0, 1)]
    for stage in STAGES:
        epochs = sorted(e for s, e in rank_draws[0] if s == stage)
        assert epochs == list(range(len(epochs))) and len(epochs) >= 2  # set_epoch told every epoch
        for epoch in epochs:
            first, second = (rank_draws[r][(stage, epoch)] for r in (0, 1))
            # The processes split each epoch: disjoint rows, together all of them.
            assert not first.keys() & second.keys() and len(first) + len(second) == TRAIN_ROWS
            # A row's negatives depend on (seed, epoch, row) only: the same as in one process.
            for index, candidates in {**first, **second}.items():
                if index in one_draws.get((stage, epoch), {}):
                    assert candidates == one_draws[(stage, epoch)][index], (stage, epoch, index)
        # ...and are redrawn each epoch.
        draws = {**rank_draws[0][(stage, 0)], **rank_draws[1][(stage, 0)]}
        redrawn = {**rank_draws[0][(stage, 1)], **rank_draws[1][(stage, 1)]}
        assert any(draws[i] != redrawn[i] for i in draws)
    # Step s of two processes reads the batches 2s and 2s+1 of one process's order (the same shuffled epoch).
    one_order = [line["index"] for line in one[0] if line["kind"] == "draw" and line["stage"] == "stage-0-align"]
    two_order = [
        index
        for step in range(TRAIN_ROWS // 4)
        for rank in (0, 1)
        for index in [
            line["index"] for line in two[rank] if line["kind"] == "draw" and line["stage"] == "stage-0-align"
        ][2 * step : 2 * step + 2]
    ]
    assert two_order == one_order[:TRAIN_ROWS]


def test_same_logs_at_the_same_steps(runs):
    (one_dir, _), (two_dir, _) = runs["one"], runs["two"]
    for stage in STAGES:
        one_log, two_log = stage_log(one_dir, stage), stage_log(two_dir, stage)
        assert [entry.get("step") for entry in two_log] == [entry.get("step") for entry in one_log]
        assert [sorted(entry) for entry in two_log] == [sorted(entry) for entry in one_log]
        train_logs = [(a, b) for a, b in zip(one_log, two_log) if "loss" in a]
        assert train_logs, stage
        for a, b in train_logs:
            # The schedule depends on the stage's steps only; gate weights and throughput span both processes.
            assert b["learning_rate"] == pytest.approx(a["learning_rate"])
            assert b["mpo_stage"] == a["mpo_stage"] == stage.split("-", 2)[2]
            assert abs(sum(b[k] for k in b if k.startswith("gate/")) - 1) < 1e-4
            assert b["epoch"] == pytest.approx(2 * a["epoch"])  # twice the rows per step


def test_the_main_process_saves_a_bundle_that_loads_and_recommends(runs):
    (one_dir, _), (two_dir, _) = runs["one"], runs["two"]
    results = {r: json.loads((two_dir.parent / "two-records" / f"results-{r}.json").read_text()) for r in (0, 1)}
    assert results[1] == {"main_process": False, "train_seconds": results[1]["train_seconds"], "metrics": {}}
    assert results[0]["metrics"]["num_samples"] == 4
    one_rec, two_rec = Recommender.from_pretrained(str(one_dir)), Recommender.from_pretrained(str(two_dir))
    history = one_rec.catalog.item_ids[:3]
    (ranking,) = two_rec.recommend([history], top_k=3)
    assert len(ranking) == 3 and all(item["item_id"] not in history for item in ranking)
    assert set(two_rec.catalog.item_ids) == set(one_rec.catalog.item_ids)


def test_a_two_process_run_killed_mid_stage_resumes(runs):
    killed, interrupted = runs["killed"], runs["interrupted"]
    assert any(line["kind"] == "killed" for line in killed[0])
    assert interrupted == {"checkpoints": ["checkpoint-5"], "done": False}
    (resumed_dir, resumed), (two_dir, two) = runs["resumed"], runs["two"]
    for rank in (0, 1):
        # The resumed launch trains only the rest of the interrupted stage (from its checkpoint) and what follows.
        steps = list(effective_steps(resumed[rank]))
        assert steps[0] == ("stage-1-text", 5) and steps[-1] == ("stage-2-all", STAGES["stage-2-all"] - 1)
        # Every step of the killed and the resumed launches read the batch of the uninterrupted run's step.
        combined = effective_steps(killed[rank], resumed[rank])
        uninterrupted = effective_steps(two[rank])
        assert {k: v["batch"] for k, v in combined.items()} == {k: v["batch"] for k, v in uninterrupted.items()}
    for stage in STAGES:
        reference, state = trainable_state(two_dir, stage), trainable_state(resumed_dir, stage)
        assert state.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(state[name], reference[name], atol=1e-6, rtol=0, msg=name)
    recommender = Recommender.from_pretrained(str(resumed_dir))
    (ranking,) = recommender.recommend([recommender.catalog.item_ids[:3]], top_k=3)
    assert len(ranking) == 3
