"""Crash-safe resume, measured: the tiny finetune job, SIGKILLed in a subprocess at seeded random optimizer steps
(and once in the middle of a checkpoint save), is resumed after each kill with the same command and `--resume`. It
must end with the trainable weights, per-step batches and losses of an uninterrupted run with the same seed, and a
bundle that loads and recommends."""

from __future__ import annotations

import json
import random

import pytest
import safetensors.torch
import torch
from finetune_runs import (
    SAVE_STEPS,
    STAGES,
    effective_steps,
    read_records,
    reference_run,
    run_job,
    trainable_state,
)
from transformers import AutoModel

from speeder_hf.serving.recommend import Recommender

KILL_SEED = 2026


def kill_points(seed: int = KILL_SEED) -> list[tuple[str, int, bool]]:
    """Seeded random kill points in run order, as `(stage folder, optimizer step in it, during the save)`: one step
    before the first checkpoint, three among the rest of the run's steps, and one checkpoint save."""
    rng = random.Random(seed)
    total = sum(STAGES.values())
    steps = [rng.randrange(1, SAVE_STEPS), *rng.sample(range(SAVE_STEPS, total + 1), 3)]
    saves = [n for n in range(SAVE_STEPS, total + 1, SAVE_STEPS) if n not in steps]
    points = [(n, False) for n in steps] + [(rng.choice(saves), True)]
    return [(*in_stage(n), during_save) for n, during_save in sorted(points)]


def in_stage(run_step: int) -> tuple[str, int]:
    """The stage folder and the step within it of the run's `run_step`-th optimizer step."""
    for stage, count in STAGES.items():
        if run_step <= count:
            return stage, run_step
        run_step -= count
    raise ValueError("past the end of the run")


def resume_step(step: int) -> int:
    """Where a run killed after optimizer step `step`, or while saving its checkpoint, continues: the last complete
    checkpoint before it (a kill after a step comes before that step's save)."""
    return (step - 1) // SAVE_STEPS * SAVE_STEPS


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """The reference run, and one run killed at each kill point in turn, each kill followed by a resume."""
    assets, reference, reference_records = reference_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("crashes")
    output, launches, partial = root / "run", [], []
    points = kill_points()
    for index, (stage, step, during_save) in enumerate(points):
        records = root / f"launch-{index}"
        kill_at = f"{stage}:{step}" + (":save" if during_save else "")
        run_job(assets, output, records, resume=index > 0, kill_at=kill_at)
        launches.append(read_records(records)[0])
        checkpoint = output / "mpo" / stage / f"checkpoint-{step}"
        partial.append(checkpoint.is_dir() and not (checkpoint / "trainer_state.json").exists())
    run_job(assets, output, root / "final", resume=True)
    launches.append(read_records(root / "final")[0])
    return {
        "points": points,
        "launches": launches,
        "partial": partial,
        "output": output,
        "reference": (reference, read_records(reference_records)[0]),
    }


def test_each_kill_hit_its_step_and_the_next_launch_resumed_there(crashed):
    points, launches = crashed["points"], crashed["launches"]
    for (stage, step, during_save), killed, following in zip(points, launches, launches[1:]):
        assert killed[-1] == {"kind": "killed", "stage": stage, "step": step, "during_save": during_save}
        # The killed launch's last optimizer step was the one that the kill point names...
        last = [line for line in killed if line["kind"] == "step"][-1]
        assert (last["stage"], last["step"] + 1) == (stage, step)
        # ...and the next one trained nothing before the last complete checkpoint.
        first = next(line for line in following if line["kind"] == "step")
        assert (first["stage"], first["step"]) == (stage, resume_step(step)), (stage, step, during_save)
    # The save that a kill cut short left a checkpoint without trainer_state.json, which the resume skipped.
    assert crashed["partial"] == [during_save for *_, during_save in points]


def test_resumed_run_matches_the_uninterrupted_one(crashed, capsys):
    reference_dir, reference = crashed["reference"]
    output, launches = crashed["output"], crashed["launches"]
    expected, resumed = effective_steps(reference), effective_steps(*launches)
    # Same stages, steps and data order (the batch of every step), and the same loss at each step.
    assert list(resumed) == list(expected)
    assert [s["batch"] for s in resumed.values()] == [s["batch"] for s in expected.values()]
    redone = [line for lines in launches for line in lines if line["kind"] == "step"]
    for line in redone:  # every step a kill made void read, when it was redone, the same batch
        assert line["batch"] == expected[(line["stage"], line["step"])]["batch"]
    losses = torch.tensor([s["loss"] for s in resumed.values()])
    torch.testing.assert_close(losses, torch.tensor([s["loss"] for s in expected.values()]), atol=1e-6, rtol=0)

    differences = {}
    for stage in STAGES:
        state, reference_state = trainable_state(output, stage), trainable_state(reference_dir, stage)
        assert state.keys() == reference_state.keys()
        for name, tensor in reference_state.items():
            torch.testing.assert_close(state[name], tensor, atol=1e-6, rtol=0, msg=f"{stage}: {name}")
            differences[f"{stage}/{name}"] = (state[name].float() - tensor.float()).abs().max().item()
    bundle = safetensors.torch.load_file(output / "model.safetensors")
    reference_bundle = safetensors.torch.load_file(reference_dir / "model.safetensors")
    for name, tensor in reference_bundle.items():
        torch.testing.assert_close(bundle[name], tensor, atol=1e-6, rtol=0, msg=name)
    metrics, reference_metrics = (
        json.loads((d / "eval_results.json").read_text())["metrics"] for d in (output, reference_dir)
    )
    scores = {k: v for k, v in reference_metrics.items() if isinstance(v, float)}
    assert {k: metrics[k] for k in scores} == pytest.approx(scores) and "MRR" in scores
    points = crashed["points"]
    with capsys.disabled():  # in the test output even when it passes
        print(
            f"\ncrash-resume: {len(points)} kill points tried, {len(points)} survived "
            f"({', '.join(f'{s}:{n}' + (' (during its save)' if v else '') for s, n, v in points)}); "
            f"largest trainable-weight difference {max(differences.values()):.3g}"
            + (" (bit-identical)" if not any(differences.values()) else "")
        )


def test_resumed_bundle_loads_and_recommends(crashed):
    output = crashed["output"]
    model = AutoModel.from_pretrained(output)
    assert type(model).__name__ == "SpeederForSequentialRec"
    recommender = Recommender.from_pretrained(str(output))
    reference = Recommender.from_pretrained(str(crashed["reference"][0]))
    history = recommender.catalog.item_ids[:3]
    (ranking,) = recommender.recommend([history], top_k=5)
    (expected,) = reference.recommend([history], top_k=5)
    assert [r["item_id"] for r in ranking] == [r["item_id"] for r in expected]
