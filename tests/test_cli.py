"""Smoke tests of the `speeder-hf` console script on a tiny saved model."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from unittest import mock

import pytest
from conftest import tiny_llm, tiny_tokenizer
from huggingface_hub import ModelCard
from test_hub import FakeHub, _uploaded, saved  # noqa: F401  (saved is a fixture)

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec
from speeder_hf.serving.recommend import Recommender
from speeder_hf_train.cli import build_parser, main

SUBCOMMANDS = {
    "build-catalog": "--sasrec_epochs",
    "train": "--stage_steps",
    "evaluate": "--model_dir",
    "recommend": "--history",
    "card": "--eval_results",
    "push": "--repo_id",
    "app": "--model_dir",
}


def test_every_subcommand_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    for command, flag in SUBCOMMANDS.items():
        assert command in top
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert flag in capsys.readouterr().out, command


def test_console_script_is_installed():
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "speeder-hf"]
    assert entry.value == "speeder_hf_train.cli:main" and entry.load() is main
    assert (Path(sys.executable).parent / "speeder-hf").is_file()


def test_recommend(saved, capsys):  # noqa: F811
    directory = saved[3]
    main(["recommend", "--model_dir", str(directory), "--history", "I1", "title 2", "--top_k", "3", "--json"])
    ranking = json.loads(capsys.readouterr().out)
    expected = Recommender.from_pretrained(str(directory)).recommend([["I1", "title 2"]], top_k=3)[0]
    assert [r["item_id"] for r in ranking] == [r["item_id"] for r in expected]
    main(["recommend", "--model_dir", str(directory), "--history", "I1", "--candidates", "I4", "I5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "[id I4]" in "".join(lines) and "[id I5]" in "".join(lines)


def test_flags_are_snake_case_and_kebab_case_still_works(saved, capsys):  # noqa: F811
    for flags in (["--model_dir", str(saved[3]), "--top_k", "2"], ["--model-dir", str(saved[3]), "--top-k", "2"]):
        main(["recommend", *flags, "--history", "I1", "--json"])
        assert len(json.loads(capsys.readouterr().out)) == 2


def _one_error_line(capsys) -> str:
    """The one stderr line of an input error: the last one, with no traceback (transformers' loading progress may
    come before it)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and not captured.out, captured.err
    assert [line for line in lines if "error:" in line] == lines[-1:], captured.err
    return lines[-1]


def test_recommend_unknown_item_is_one_line_and_exit_code_2(saved, capsys):  # noqa: F811
    assert main(["recommend", "--model_dir", str(saved[3]), "--history", "nope"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("speeder-hf recommend: error: Unknown item 'nope'")


def test_missing_file_and_bad_flag_value_are_one_line_each(saved, tmp_path, capsys):  # noqa: F811
    missing = tmp_path / "nothing.json"
    card = ["card", "--model_dir", str(saved[3]), "--eval_results", str(missing), "--out", str(tmp_path / "c.md")]
    assert main(card) == 2
    assert str(missing) in _one_error_line(capsys)
    assert main(["train", "--eval_split", "train"]) == 2
    assert "eval_split must be 'test' or 'validation', got 'train'" in _one_error_line(capsys)


def test_verbose_shows_the_traceback_of_an_input_error(saved, capsys):  # noqa: F811
    assert main(["--verbose", "recommend", "--model_dir", str(saved[3]), "--history", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UnknownItemError" in err
    assert err.strip().splitlines()[-1].startswith("speeder-hf recommend: error: Unknown item 'nope'")


def test_card(saved, tmp_path, capsys):  # noqa: F811
    directory = saved[3]
    out = tmp_path / "cards" / "speeder-tiny.md"
    main(
        [
            "card",
            "--model_dir",
            str(directory),
            "--eval_results",
            str(directory / "eval_results.json"),
            "--out",
            str(out),
        ]
    )
    card = ModelCard.load(out)
    assert card.data.model_name == "speeder-tiny"  # the directory name, without --repo_id
    assert card.data.eval_results[0].metric_value == pytest.approx(saved[4]["metrics"]["VHR@1"])
    assert "Wrote the model card" in capsys.readouterr().out


def test_push(saved, tmp_path):  # noqa: F811
    directory = tmp_path / "model"
    shutil.copytree(saved[3], directory)
    fake = FakeHub()
    with mock.patch("speeder_hf.hub.publishing.HfApi", return_value=fake):
        main(["push", "--model_dir", str(directory), "--repo_id", "org/speeder-tiny", "--private"])
    (upload,) = fake.uploads
    assert upload["repo_id"] == "org/speeder-tiny" and fake.created[0]["private"] is True
    assert {"README.md", "model.safetensors", "item_catalog.json"} <= _uploaded(upload)
    assert 'model="org/speeder-tiny"' in upload["readme"]


def test_parser_builds_finetune_arguments():
    from speeder_hf_train.cli import _finetune_arguments

    args = build_parser().parse_args(["train", "--dataset", "x", "--stage_steps", "3", "--max_eval_samples", "-1"])
    settings = _finetune_arguments(args)
    assert (settings.dataset, settings.stage_steps, settings.max_eval_samples) == ("x", 3, None)
    with pytest.raises(ValueError, match="eval_split must be 'test' or 'validation', got 'train'"):
        _finetune_arguments(build_parser().parse_args(["train", "--eval_split", "train"]))


# ----- the data subcommands on a tiny dataset (S3Rec text format) and a tiny LLM folder ------------------------------
TINY_RUN = [
    "--modalities",
    "id",
    "--num_candidates",
    "5",
    "--max_history_len",
    "8",
    "--sasrec_epochs",
    "1",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    data.mkdir()
    rng = random.Random(0)
    lines = [" ".join(map(str, [user, *rng.sample(range(1, 41), 7)])) for user in range(1, 13)]
    (data / "tiny.txt").write_text("\n".join(lines) + "\n")
    with open(data / "items.jsonl", "w") as f:
        for item in range(1, 41):
            f.write(json.dumps({"item_id": item, "title": f"lipstick {item}", "categories": [["Beauty"]]}) + "\n")
    tokenizer = tiny_tokenizer()
    llm = tiny_llm(vocab_size=len(tokenizer))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root


@pytest.fixture(scope="module")
def trained(tiny_data):
    out = tiny_data / "run"
    main(
        ["train", "--dataset", str(tiny_data / "data"), "--output_dir", str(out), "--llm", str(tiny_data / "llm")]
        + TINY_RUN
        + ["--stage_steps", "1", "--final_stage_steps", "2", "--batch_size", "2", "--max_train_samples", "8"]
        + ["--max_eval_samples", "4", "--eval_batch_size", "4", "--num_examples", "1"]
        + ["--cache_dir", str(tiny_data / "cache")]
    )
    return out


def test_train_saves_a_model_that_recommends(trained, tiny_data):
    results = json.loads((trained / "eval_results.json").read_text())
    assert results["metrics"]["num_samples"] == 4 and results["metrics"]["ValidRatio"] == 1.0
    assert [stage["name"] for stage in results["mpo_stages"]] == ["align", "id"]
    assert [stage["max_steps"] for stage in results["mpo_stages"]] == [1, 2]  # --final_stage_steps
    assert results["train_samples_seen"] == 3 * 2 and results["split"] == "test"
    assert results["split_strategy"] == "leave_one_out"
    # Both SASRecs (all training items; each user's last held out) cached for a rerun
    assert len(list((tiny_data / "cache").glob("sasrec-*/model.safetensors"))) == 2
    prior = results["priors"]
    assert prior["mode"] == "after_training" and prior["weights"]["sasrec"] > 0 and prior["calibration_users"] == 12
    # The saved model recommends through transformers alone: the pipeline ships with it as remote code.
    config = json.loads((trained / "config.json").read_text())
    assert config["custom_pipelines"]["sequential-recommendation"] == {
        "impl": "pipeline_speeder.SequentialRecPipeline",
        "pt": ["AutoModel"],
    }
    assert (trained / "pipeline_speeder.py").is_file() and (trained / "recommend.py").is_file()
    catalog = ItemCatalog.load(trained)
    history = [catalog.item_ids[0], catalog.titles[1]]
    (ranking,) = Recommender.from_pretrained(str(trained)).recommend([history], top_k=2)
    assert len(ranking) == 2 and not {r["item_id"] for r in ranking} & set(catalog.item_ids[:2])


def test_evaluate_reproduces_the_metrics_of_train(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    main(
        ["evaluate", "--model_dir", str(trained), "--dataset", str(tiny_data / "data"), "--max_samples", "4"]
        + ["--out", str(out)]
    )
    metrics = json.loads(out.read_text())["metrics"]
    expected = json.loads((trained / "eval_results.json").read_text())["metrics"]
    # Same split seed, candidates and history length as training: the same users get the same numbers.
    numbers = {k: v for k, v in expected.items() if isinstance(v, int | float)}
    assert {k: metrics[k] for k in numbers} == pytest.approx(numbers)
    assert metrics["protocol"] == expected["protocol"]
    assert '"split": "test"' in capsys.readouterr().out


def test_evaluate_refuses_another_dataset(trained, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "other.txt").write_text("1 1 2 3\n2 2 3 4\n")
    with pytest.raises(SystemExit, match="does not have the catalog"):
        main(["evaluate", "--model_dir", str(trained), "--dataset", str(other)])


def test_a_model_saved_with_numbered_items_names_its_ids_when_asked_for_asins(trained, tiny_data, tmp_path, capsys):
    # The tiny data has no ASINs, so its model names items by number, as Beauty models saved before ASINs did.
    assert main(["recommend", "--model_dir", str(trained), "--history", "B0001"]) == 2
    first = ", ".join(repr(i) for i in ItemCatalog.load(trained).item_ids[:3])
    assert f"whose ids are like {first} (" in _one_error_line(capsys)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(tiny_data / "data" / "tiny.txt", renamed)
    records = [json.loads(line) for line in (tiny_data / "data" / "items.jsonl").read_text().splitlines()]
    (renamed / "items.jsonl").write_text(
        "".join(json.dumps({**r, "asin": f"B{r['item_id']:04d}"}) + "\n" for r in records)
    )
    with pytest.raises(SystemExit, match=rf"the same items under other ids \(the model's {first}, the dataset's 'B"):
        main(["evaluate", "--model_dir", str(trained), "--dataset", str(renamed)])


def test_build_catalog(tiny_data, tmp_path, capsys):
    out = tmp_path / "catalog"
    main(
        ["build-catalog", "--dataset", str(tiny_data / "data"), "--out", str(out)]
        + [*TINY_RUN, "--cache_dir", str(tmp_path / "cache")]
    )
    catalog = ItemCatalog.load(out)
    assert catalog.modalities == ["id"] and catalog.titles[0] == "lipstick 1"
    assert catalog.features["id"].shape[0] == len(catalog)
    sasrec = SASRec.from_pretrained(out / "sasrec")
    assert sasrec.num_items == len(catalog)
    assert f"Saved the catalog of {len(catalog)} items" in capsys.readouterr().out


def test_build_catalog_on_a_malformed_line_prints_one_line_naming_file_and_line(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "bad.txt").write_text("1 1 2 3\n2 2 x 4\n")
    script = Path(sys.executable).with_name("speeder-hf")  # the installed console script, as a user runs it
    result = subprocess.run(
        [str(script), "build-catalog", "--dataset", str(data), "--out", str(tmp_path / "catalog")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"speeder-hf build-catalog: error: {data / 'bad.txt'}, line 2: 'x' is not a non-negative integer id."
    ]
    assert not (tmp_path / "catalog").exists()


def test_two_stage_ranks_the_whole_catalog_and_cannot_find_what_was_not_retrieved(trained, tiny_data, tmp_path):
    from benchmarks import report, two_stage

    argv = ["--model_dir", str(trained), "--dataset", str(tiny_data / "data"), "--max_users", "12"]
    entry = two_stage.main(argv + ["--retrieve", "5", "--out", str(tmp_path)])[str(tiny_data / "data")]
    assert entry["n_users"] == 12 and entry["retrieved"] == 5
    sasrec, two = entry["sasrec"], entry["two_stage"]
    # Reranking only reorders the retrieved items: at the cut-off K both find exactly the retrieved targets.
    assert two["HR@5"] == pytest.approx(entry["retriever_recall"]) == pytest.approx(sasrec["HR@5"])
    assert two["HR@10"] <= entry["retriever_recall"] + 1e-9 and 0 <= two["NDCG@10"] <= two["HR@10"]
    section = "\n".join(report.two_stage_section(json.loads((tmp_path / "two_stage.json").read_text())))
    assert "| SASRec top K, Speeder rerank |" in section and "two-stage NDCG@10" in section
