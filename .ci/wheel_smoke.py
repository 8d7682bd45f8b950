"""Smoke test of an installed (non-editable) speeder_hf, run from outside the checkout by `.ci/run`.

    python .ci/wheel_smoke.py --checkout /path/to/checkout   # with the wheel's virtual environment's python

Checks what a user of the wheel needs first: the package imports from site-packages (not from the checkout), the
embedded Amazon Beauty data loads from the package data, a tiny saved bundle loads and recommends, a model card is
generated from the package's template, and the `speeder-hf` console script answers `--help`. Tiny in-process
models only: offline, seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"wheel smoke test FAILED: {message}")
    print(f"ok: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, required=True, help="The source tree the package must NOT load from.")
    args = parser.parse_args()
    checkout = args.checkout.resolve()

    import speeder_hf

    package = Path(speeder_hf.__file__).resolve().parent
    check(not package.is_relative_to(checkout), f"speeder_hf {speeder_hf.__version__} imports from {package}")

    from speeder_hf.data import load_dataset_by_name, make_split

    rec = load_dataset_by_name("beauty")
    stats = rec.statistics()
    check(
        (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502),
        f"the embedded Beauty data loads from the package: {stats['users']} users, {stats['items']} items",
    )

    from speeder_hf import ItemCatalog, SpeederForSequentialRec
    from speeder_hf.evaluation.ranking import evaluate_ranking
    from speeder_hf.evaluation.report import card_examples
    from speeder_hf.hub.model_card import build_model_card
    from speeder_hf.serving.bundle import save_pretrained_bundle
    from speeder_hf.serving.recommend import Recommender
    from speeder_hf.testing import tiny_causal_lm, word_level_tokenizer
    from speeder_hf.training.mpo import default_stages

    # A tiny model over the real catalog, with random features, evaluated on the first test users.
    split = make_split(rec, num_candidates=5, max_history_len=8)
    catalog = ItemCatalog.from_dataset(rec)
    tokenizer = word_level_tokenizer("a user interacted with these items in order which item next candidates".split())
    model = SpeederForSequentialRec.from_llm(
        tiny_causal_lm(len(tokenizer) + 64),
        tokenizer,
        modalities=["text", "id"],
        modality_dims=[8, 4],
        mrc_hidden_size=16,
        gate_hidden_size=8,
        max_history_len=8,
        num_candidates=5,
    )
    generator = torch.Generator().manual_seed(0)
    features = {"text": torch.randn(len(catalog), 8, generator=generator), "id": torch.randn(len(catalog), 4)}
    model.set_item_features(features, torch.ones(len(catalog), 2, dtype=torch.bool))
    rows = [split["test"][i] for i in range(4)]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "speeder-tiny"
        save_pretrained_bundle(model.eval(), folder, tokenizer, catalog)
        history = [catalog.item_ids[i] for i in rows[0]["history"]]
        (ranking,) = Recommender.from_pretrained(str(folder)).recommend([history], top_k=3)
        check(
            len(ranking) == 3 and {"item_id", "title", "score"} <= set(ranking[0]),
            f"a saved tiny bundle recommends: {[r['item_id'] for r in ranking]}",
        )

        metrics = evaluate_ranking(model, tokenizer, rows, item_titles=catalog.titles, show_progress=False)
        results = {
            "dataset": "beauty",
            "split": "test",
            "metrics": metrics,
            "train_samples_seen": 0,
            "mpo_stages": [asdict(stage) for stage in default_stages(["text", "id"], max_steps=1)],
            "train_seconds": 0.0,
            "wall_seconds": 0.0,
            "machine": "CI wheel smoke test",
            "command": "python .ci/wheel_smoke.py",
            "arguments": {"llm": "smollm2", "batch_size": 1, "gradient_accumulation_steps": 1, "lora_r": 8},
            "examples": card_examples(rows, catalog, 2),
        }
        (folder / "eval_results.json").write_text(json.dumps(results))
        card = build_model_card(folder, folder / "eval_results.json", repo_id="someone/speeder-tiny")
        check("someone/speeder-tiny" in card.text and "{{" not in card.text, "a model card is generated")

    script = Path(sys.executable).with_name("speeder-hf")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    check(result.returncode == 0 and "build-catalog" in result.stdout, f"{script} --help answers")


if __name__ == "__main__":
    main()
