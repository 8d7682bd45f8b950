"""Model card generation and the publish flow (the Hub calls are mocked: no network here)."""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import pytest
import transformers
from conftest import run_fresh_python, tiny_speeder
from huggingface_hub import ModelCard
from test_pipeline import NUM_ITEMS, tiny_catalog, tiny_sasrec

import speeder_hf.serving.pipeline_speeder  # noqa: F401  (registers the task)
from speeder_hf.data import STRATEGY_TARGETS
from speeder_hf.evaluation.ranking import evaluate_ranking
from speeder_hf.evaluation.report import card_examples
from speeder_hf.hub.citations import dataset_info
from speeder_hf.hub.model_card import HUB_PIPELINE_TAG, build_model_card
from speeder_hf.hub.publishing import publish, publish_folder
from speeder_hf.serving.bundle import save_pretrained_bundle
from speeder_hf.serving.recommend import Recommender
from speeder_hf.training.mpo import default_stages
from speeder_hf_train.app import RecommenderDemo, load_examples


def eval_rows(n_users: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for user in range(n_users):
        items = rng.sample(range(NUM_ITEMS), 9)
        rows.append({"user_id": f"u{user}", "history": items[:4], "target": items[4], "candidates": sorted(items[4:])})
    return rows


def make_eval_results(model, tokenizer, catalog, rows) -> dict:
    """An eval_results.json as run_finetune writes it, with metrics really measured on `rows`."""
    metrics = evaluate_ranking(model, tokenizer, rows, item_titles=catalog.titles, show_progress=False)
    stages = default_stages(["text", "id"], max_steps=2)
    return {
        "dataset": "Beauty",
        "split": "test",
        "metrics": metrics,
        "train_samples_seen": 48,
        "mpo_stages": [asdict(stage) for stage in stages],
        "train_seconds": 3.0,
        "wall_seconds": 9.0,
        "machine": "x86_64 CPU, 2 threads, torch test",
        "command": "python examples/finetune.py --stage_steps 2",
        "arguments": {"llm": "smollm2", "batch_size": 8, "gradient_accumulation_steps": 1, "lora_r": 8, "seed": 0},
        "date": "2026-11-27",
        "examples": card_examples(rows, catalog, 2),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tokenizer = tiny_speeder(num_items=NUM_ITEMS)
    catalog = tiny_catalog()
    directory = tmp_path_factory.mktemp("hub") / "speeder-tiny"
    save_pretrained_bundle(model, directory, tokenizer, catalog, sasrec=tiny_sasrec())
    results = make_eval_results(model, tokenizer, catalog, eval_rows())
    (directory / "eval_results.json").write_text(json.dumps(results))
    return model, tokenizer, catalog, directory, results


@pytest.fixture(scope="module")
def card(saved):
    directory = saved[3]
    return build_model_card(directory, directory / "eval_results.json", repo_id="someone/speeder-tiny")


def test_card_metadata_parses_back_with_the_given_results(card, saved):
    results = saved[4]
    data = ModelCard(str(card)).data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "other"
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.datasets == ["amazon-beauty-2014-5core"]
    assert data.license == "apache-2.0"
    assert {"recommendation", "sequential-recommendation", "speeder"} <= set(data.tags)
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    assert set(values) == {"VHR@1", "ValidRatio", "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"}
    assert values == {name: pytest.approx(results["metrics"][name]) for name in values}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert all(r.metric_config == results["metrics"]["protocol"] for r in data.eval_results)
    # The metric table of the body shows the same numbers.
    assert f"| VHR@1 | {results['metrics']['VHR@1']:.4f} |" in card.text


def test_card_has_no_template_text_left(card):
    content = str(card)
    assert not re.search(r"\{\{|\}\}|\{%|More Information Needed|TODO|TBD|lorem", content, flags=re.IGNORECASE)


def test_card_claims_no_task_the_hub_widget_would_fail_to_run(card):
    # The Hub's widget runs no custom code and knows no recommendation task: a transformers task (text-generation,
    # say) would show a widget that fails on this model, so the card says "other" and has no widget examples.
    data = ModelCard(str(card)).data
    assert data.pipeline_tag == HUB_PIPELINE_TAG == "other"
    assert data.pipeline_tag not in transformers.pipelines.SUPPORTED_TASKS
    assert "widget" not in data.to_dict()
    assert "custom_code" in data.tags


def test_card_examples_are_the_models_real_recommendations_and_the_apps(card, saved):
    directory, results = saved[3], saved[4]
    section = card.text[card.text.index("### Example recommendations") : card.text.index("## Training")]
    recommender = Recommender.from_pretrained(str(directory))
    demo = RecommenderDemo.from_pretrained(directory)
    # One home for the examples: the results saved with the model, which the app reads back.
    assert demo.examples == results["examples"] == load_examples(directory)
    for example in results["examples"]:
        (ranking,) = recommender.recommend([example["history"]], top_k=5)
        user = section[section.index(f"**User {example['user_id']}**") :].split("The true next item")[0]
        assert "; ".join(tiny_catalog().titles[int(i[1:])] for i in example["history"]) in user
        for rank, item in enumerate(ranking, 1):
            assert f"{rank}. {item['title']} (id {item['item_id']}, score {item['score']:.3f})" in user
        # The app's ranking for that example user is the card's.
        shown = re.findall(r'<tr data-item-id="([^"]+)"', demo.recommend(example["history"])[1])
        assert shown[:5] == [item["item_id"] for item in ranking]


def test_card_links_the_web_demo(card, saved, caplog):
    section = card.text[card.text.index("## Web demo") : card.text.index("## Usage")]
    assert '`pip install "speeder_hf[app]"` and `speeder-hf app --model_dir someone/speeder-tiny`' in section
    assert "huggingface.co/spaces" not in section
    directory, results = saved[3], saved[4]
    with_space = build_model_card(directory, results, repo_id="someone/speeder-tiny", space_id="someone/demo")
    assert "(https://huggingface.co/spaces/someone/demo)" in with_space.text
    # The app shows the examples saved with the model: a card built from other examples says so.
    changed = {**results, "examples": results["examples"][:1]}
    with caplog.at_level(logging.WARNING, logger="speeder_hf.hub.model_card"):
        build_model_card(directory, changed)
    assert "differ from those in" in caplog.text and "which the web demo shows" in caplog.text


def test_card_training_and_citation_sections(card):
    text = card.text
    assert "single forward pass: each label's logit plus a learned pointer score" in text
    assert "| 1 | align | text | mrc, spae, head | no | 0.001 | 2 |" in text
    assert "| 3 | all | text, id | mrc, spae, head, lora | yes | 0.0002 | 2 |" in text
    assert "6 optimizer steps over 3 stages, 48 training samples seen" in text
    assert "x86_64 CPU, 2 threads" in text
    assert "arXiv:2511.05885" in text and "mcauley2015image" in text and "kang2018sasrec" in text
    assert "The image modality had no data" in text  # the tiny model has an image expert, no stage used it


def test_card_states_the_split_strategy_its_report_records(saved):
    results = json.loads(json.dumps(saved[4]))
    assert "users, with the protocol" in build_model_card(saved[3], results).text  # an older report claims none
    results["split_strategy"] = "given"  # a LLaRA folder's own windows
    text = build_model_card(saved[3], results).text
    assert f"users, with {STRATEGY_TARGETS['given']} and the protocol" in text and "leave-one-out" not in text


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: r.pop("metrics"), r"lacks \['metrics'\]"),
        (lambda r: r.update(dataset="my-private-data"), "No card description for dataset 'my-private-data'"),
        (lambda r: r.update(arguments={"llm": "/models/local"}), "Cannot tell the backbone's Hub id"),
        (lambda r: r.update(examples=[]), "has no examples"),
    ],
)
def test_card_refuses_incomplete_results(saved, change, match):
    results = json.loads(json.dumps(saved[4]))
    change(results)
    with pytest.raises(ValueError, match=match):
        build_model_card(saved[3], results)


def test_dataset_names_map_to_citations():
    assert dataset_info("Beauty").slug == "amazon-beauty-2014-5core"
    assert dataset_info("ml-100k").pretty == "MovieLens-100K"
    assert "harper2015movielens" in dataset_info("movielens").citations


def test_usage_leads_with_transformers_alone_and_both_routes_run_and_agree(card, saved, tmp_path):
    directory = saved[3]
    usage = card.text[card.text.index("## Usage") : card.text.index("## Evaluation")]
    remote, package, model_only = re.findall(r"```python\n(.*?)```", usage, flags=re.DOTALL)
    assert re.search(r"```python\n(.*?)```", card.text, flags=re.DOTALL).group(1) == remote  # the card's first
    assert 'model="someone/speeder-tiny", trust_remote_code=True' in remote and "speeder_hf" not in remote
    assert "import speeder_hf" in package and 'model="someone/speeder-tiny")' in package
    assert 'AutoModel.from_pretrained("someone/speeder-tiny", trust_remote_code=True)' in model_only
    printed = {}
    for name, snippet in (("remote", remote), ("package", package)):
        (tmp_path / f"{name}.py").write_text(snippet.replace("someone/speeder-tiny", str(directory)))
        result = run_fresh_python([str(tmp_path / f"{name}.py")], cwd=tmp_path, HF_MODULES_CACHE=str(tmp_path / "hf"))
        printed[name] = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(printed["remote"]) == 3 and "'item_id'" in printed["remote"][0] and "'score'" in printed["remote"][0]
    assert printed["package"] == printed["remote"][:1]  # the same call, the same recommendations


# ----- publishing -------------------------------------------------------------------------------------------------
class FakeHub:
    """Stands in for HfApi: records the calls and what the folder held at upload time."""

    def __init__(self):
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.created.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})

    def upload_folder(self, repo_id, folder_path, allow_patterns=None, commit_message=None, **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.uploads.append(
            {
                "repo_id": repo_id,
                "files": files,
                "allow": allow_patterns,
                "readme": (folder / "README.md").read_text(),
                "message": commit_message,
            }
        )
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


def _uploaded(upload) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    return set(filter_repo_objects(upload["files"], allow_patterns=upload["allow"]))


def test_publish_saves_then_writes_the_card_then_uploads(saved, card, tmp_path):
    model, tokenizer, catalog = saved[:3]
    fake = FakeHub()
    with mock.patch("speeder_hf.hub.publishing.HfApi", return_value=fake) as api:
        url = publish(
            model,
            tokenizer,
            catalog,
            "someone/speeder-tiny",
            card,
            sasrec=tiny_sasrec(),
            token="t",
            save_directory=tmp_path / "out",
        )
    api.assert_called_once_with(token="t")
    assert url == "https://huggingface.co/someone/speeder-tiny/commit/abc"
    assert fake.created == [{"repo_id": "someone/speeder-tiny", "private": None, "exist_ok": True}]
    (upload,) = fake.uploads
    assert upload["readme"] == str(card)  # the card, not a push_to_hub stub
    uploaded = _uploaded(upload)
    expected = {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "item_catalog.json",
        "item_catalog.safetensors",
        "sasrec/config.json",
        "sasrec/model.safetensors",
        "configuration_speeder.py",
        "modeling_speeder.py",
        "mrc.py",
        "spae.py",
        "item_features.py",
        "pipeline_speeder.py",  # the pipeline and what it reads, for trust_remote_code without the package
        "recommend.py",
        "collator.py",
        "loading.py",
        "item_index.py",
    }
    assert expected <= uploaded
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]["AutoModel"]


def test_publish_folder_builds_the_card_with_the_repo_id_and_leaves_training_files(saved, tmp_path):
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(saved[3], directory)
    (directory / "mpo" / "stage-0-align" / "checkpoint-1").mkdir(parents=True)
    (directory / "mpo" / "stage-0-align" / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    fake = FakeHub()
    with mock.patch("speeder_hf.hub.publishing.HfApi", return_value=fake):
        publish_folder(directory, "org/speeder-beauty", private=True)
    (upload,) = fake.uploads
    uploaded = _uploaded(upload)
    assert "eval_results.json" in uploaded and "sasrec/model.safetensors" in uploaded
    assert not any(name.startswith("mpo/") for name in uploaded)
    assert fake.created[0]["private"] is True
    readme = (directory / "README.md").read_text()
    assert readme == upload["readme"] and 'model="org/speeder-beauty"' in readme
    assert ModelCard(readme).data.eval_results[0].metric_value == pytest.approx(saved[4]["metrics"]["VHR@1"])


def test_publish_folder_needs_results_or_a_card(saved, tmp_path):
    with pytest.raises(FileNotFoundError):
        publish_folder(tmp_path, "org/x")
