"""SpeederTrainer: a short train() lowers the loss and updates MRC, SPAE and LoRA; metadata never reaches the
model; num_items_in_batch does; gate weights, stage and throughput are logged."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import tiny_speeder
from transformers import TrainingArguments

from speeder_hf.processing.collator import SpeederDataCollator
from speeder_hf.training.lora import apply_lora
from speeder_hf.training.trainer import METADATA_KEYS, SpeederTrainer

PROMPT = "a user <|pos_1|><item> <|pos_2|><item> candidates ( A ) <item> ( B ) <item> answer :"
RECENCY = [2, 1, 0, 0]  # two history items (most recent = 1), two candidates


class ToyRows(torch.utils.data.Dataset):
    """`n` random rows `{history, candidates, target_index}` over a 30-item catalog; records `set_epoch` calls."""

    def __init__(self, n: int = 8, seed: int = 0):
        rng = random.Random(seed)
        self.rows = [
            {
                "history": rng.sample(range(30), 2),
                "candidates": rng.sample(range(30), 2),
                "target_index": rng.randrange(2),
            }
            for _ in range(n)
        ]
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class ToyCollator:
    """Fixed-length prompts answered by the target's label token; labels only on the answer. Stands in for
    SpeederDataCollator, which these tests do not exercise."""

    def __init__(self, tokenizer, config, metadata: bool = False):
        self.prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        self.label_ids, self.metadata = config.label_token_ids, metadata

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        answers = [self.label_ids[row["target_index"]] for row in rows]
        input_ids = torch.tensor([self.prompt_ids + [a] for a in answers])  # (B, S)
        labels = torch.full_like(input_ids, -100)
        labels[:, -1] = torch.tensor(answers)
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
            "item_ids": torch.tensor([i for row in rows for i in row["history"] + row["candidates"]]),  # (4B,)
            "item_recency": torch.tensor(RECENCY * len(rows)),
        }
        if self.metadata:
            batch["candidate_items"] = torch.tensor([row["candidates"] for row in rows])
            batch["target_index"] = torch.tensor([row["target_index"] for row in rows])
            batch["history_len"] = torch.full((len(rows),), 2)
        return batch


def toy_args(output_dir, **overrides) -> TrainingArguments:
    settings = {
        "output_dir": str(output_dir),
        "report_to": [],
        "use_cpu": True,
        "remove_unused_columns": False,
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(**settings)


def dataset_loss(model, rows: ToyRows, collator: ToyCollator) -> float:
    model.eval()
    with torch.no_grad():
        batch = collator(rows.rows)
        return model(**{k: v for k, v in batch.items() if k not in METADATA_KEYS}).loss.item()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_four_steps_lower_the_loss_and_update_mrc_spae_pointer_and_lora(tmp_path):
    base, tokenizer = tiny_speeder()
    model = apply_lora(base, r=4)
    rows, collator = ToyRows(), ToyCollator(tokenizer, base.config, metadata=True)
    before, params = dataset_loss(model, rows, collator), snapshot(model)
    trainer = SpeederTrainer(
        model=model, args=toy_args(tmp_path), train_dataset=rows, data_collator=collator, stage_name="text"
    )
    trainer.train()
    assert dataset_loss(model, rows, collator) < before

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, params[name])}
    for part in ("lora_B", ".mrc.modules_to_save.", ".spae.modules_to_save.", ".candidate_pointer.modules_to_save."):
        assert any(part in name for name in changed), part
    assert all("lora_" in n or "modules_to_save" in n for n in changed)  # the LLM and the originals stay frozen

    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(train_logs) == 4
    for log in train_logs:
        assert log["mpo_stage"] == "text" and log["throughput/samples_per_second"] > 0
        assert sum(log[f"gate/{m}"] for m in base.config.modalities) == pytest.approx(1.0, abs=1e-5)


def test_metadata_is_dropped_and_num_items_in_batch_forwarded(tmp_path):
    model, tokenizer = tiny_speeder()
    model.set_active_modalities(["text", "id"])
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    collator = ToyCollator(tokenizer, model.config, metadata=True)
    args = toy_args(tmp_path, max_steps=1, per_device_eval_batch_size=4)
    trainer = SpeederTrainer(
        model=model, args=args, train_dataset=ToyRows(4), eval_dataset=ToyRows(4, seed=1), data_collator=collator
    )
    trainer.train()
    # 4 rows, one answer token each.
    assert [int(kwargs["num_items_in_batch"]) for kwargs in seen] == [4]
    assert "eval_loss" in trainer.evaluate()
    assert len(seen) == 2 and not any(key in kwargs for kwargs in seen for key in METADATA_KEYS)
    (log,) = [log for log in trainer.state.log_history if "loss" in log]
    assert log["gate/image"] == 0.0 and log["gate/text"] + log["gate/id"] == pytest.approx(1.0, abs=1e-5)
    assert "mpo_stage" not in log


def test_trains_with_the_real_collator_and_its_metadata(tmp_path):
    model, tokenizer = tiny_speeder()
    rng = random.Random(0)
    rows = [
        {"user_id": str(u), "history": rng.sample(range(30), 1 + u % 4), "target": t, "candidates": [t, (t + 7) % 30]}
        for u, t in enumerate(rng.sample(range(30), 8))
    ]
    collator = SpeederDataCollator(tokenizer, model.config, mode="train", return_metadata=True, shuffle_seed=0)
    assert set(METADATA_KEYS) <= set(collator(rows[:2]))
    trainer = SpeederTrainer(
        model=model, args=toy_args(tmp_path, max_steps=2), train_dataset=rows, data_collator=collator
    )
    before = {name: w.detach().clone() for name, w in model.named_parameters() if w.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses)
    changed = [name for name, w in model.named_parameters() if name in before and not torch.equal(w, before[name])]
    assert any(name.startswith("mrc.") for name in changed)  # the batches reached the optimizer


def test_remove_unused_columns_must_be_off(tmp_path):
    model, tokenizer = tiny_speeder()
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        SpeederTrainer(model=model, args=toy_args(tmp_path, remove_unused_columns=True), train_dataset=ToyRows(4))
