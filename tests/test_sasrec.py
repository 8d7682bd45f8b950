"""SASRec on a tiny learnable pattern: masks, training, evaluation, export, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import SASRec, evaluate_sasrec, sasrec_item_features, train_sasrec
from speeder_hf.data import RecDataset, make_split, training_sequences
from speeder_hf.model.modeling_sasrec import left_pad

NUM_ITEMS = 24


def cyclic_rec() -> RecDataset:
    """Users walk the cycle 0 -> 1 -> ... -> 19 -> 0 from different starts; items 20..23 are never used."""
    sequences = {f"u{k}": [str((k + t) % 20) for t in range(7)] for k in range(40)}
    return RecDataset.from_sequences("cycle", sequences, item_ids=[str(i) for i in range(NUM_ITEMS)])


def test_padding_does_not_change_hidden_states():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, hidden_size=16, num_layers=2, num_heads=2, max_len=8).eval()
    alone = model(left_pad([[3, 4, 5]], "cpu"))[0]  # (3, d)
    padded = model(left_pad([[3, 4, 5], [1, 2, 3, 4, 5, 6]], "cpu"))[0, -3:]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    # causal: the state at item 4 ignores the item after it
    torch.testing.assert_close(model(left_pad([[3, 4, 9]], "cpu"))[0, :2], alone[:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(left_pad([[3, 4, 9]], "cpu"))[0, 2], alone[2])
    assert torch.isfinite(model(left_pad([[1], [1, 2, 3, 4, 5]], "cpu"))).all()
    with pytest.raises(ValueError, match="reads at most 8 items"):
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="empty history"):
        model.last_hidden([[]])


@pytest.mark.parametrize("loss", ["ce", "sampled", "bce"])
def test_sasrec_learns_the_cycle_and_beats_chance(loss, tmp_path):
    rec = cyclic_rec()
    split = make_split(rec, num_candidates=5, max_history_len=6)
    result = train_sasrec(
        training_sequences(rec), NUM_ITEMS, split["validation"], hidden_size=16, num_layers=1, max_len=6,
        dropout=0.0, loss=loss, num_epochs=60, batch_size=8, learning_rate=1e-2, eval_every=10, patience=3,
        device="cpu", progress=False,
    )  # fmt: skip
    metrics = evaluate_sasrec(result.model, split["test"], progress=False)
    # chance: HR@1 = 1/5 over candidates, about 1/18 over all non-history items
    assert metrics["HR@1"] > 0.9 and metrics["full_HR@1"] > 0.8, metrics
    assert metrics["num_samples"] == 40
    assert any("validation_full_NDCG@10" in entry for entry in result.log)
    assert result.best_epoch % 10 == 0

    result.model.save_pretrained(tmp_path / "sasrec")
    again = SASRec.from_pretrained(tmp_path / "sasrec")
    assert (again.num_items, again.max_len) == (NUM_ITEMS, 6)
    assert evaluate_sasrec(again, split["test"], progress=False) == metrics


def test_item_features_mark_untrained_items_absent():
    rec = cyclic_rec()
    model = SASRec(NUM_ITEMS, hidden_size=8)
    values, present = sasrec_item_features(model, training_sequences(rec))
    assert values.shape == (NUM_ITEMS, 8)
    np.testing.assert_array_equal(present, np.arange(NUM_ITEMS) < 20)
    catalog = ItemCatalog.from_dataset(rec)
    catalog.add_features("id", values, present, {"model": "sasrec"})
    features, mask = catalog.feature_tensors(["id"])
    assert torch.equal(features["id"][:20], model.item_embeddings()[:20].detach())
    assert not features["id"][20:].any() and mask[:, 0].tolist() == present.tolist()


def test_training_input_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        train_sasrec([[0, 1]], 5, loss="mse")
    with pytest.raises(ValueError, match="nothing to learn"):
        train_sasrec([[0], [1]], 5)
    with pytest.raises(ValueError, match="item index 7, outside the 5-item catalog"):
        train_sasrec([[0, 7]], 5)


def test_evaluation_rejects_bad_candidate_sets():
    rec = cyclic_rec()
    split = make_split(rec, num_candidates=5)
    model = SASRec(NUM_ITEMS, hidden_size=8)
    row = split["test"][0]
    others = [c for c in row["candidates"] if c != row["target"]]
    for bad in (others + [others[0]], [row["target"], row["target"], *others[:3]]):
        samples = split["test"].select([0]).map(lambda r, b=bad: {"candidates": b})
        with pytest.raises(ValueError, match="Sample 0: candidates must hold the target exactly once"):
            evaluate_sasrec(model, samples, progress=False)


def test_length_bucketed_batches_cover_every_sequence_once():
    from speeder_hf.catalog.sasrec import _batches

    rng = np.random.default_rng(0)
    sequences = [[i] * (1 + i % 37) for i in range(1000)]
    batches = list(_batches(sequences, 16, rng, pool=4))
    seen = sorted(s[0] for b in batches for s in b)
    assert seen == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    # within a pool the lengths are sorted, so a batch spans far fewer lengths than a random one would
    spans = [max(map(len, b)) - min(map(len, b)) for b in batches]
    assert np.mean(spans) < 10


def test_cached_sasrec_trains_once_per_data_and_settings(tmp_path, monkeypatch):
    from speeder_hf_train import finetune

    calls = []
    monkeypatch.setattr(finetune, "train_sasrec", lambda *a, **k: calls.append(k) or train_sasrec(*a, **k))
    sequences = training_sequences(cyclic_rec())
    settings = {"hidden_size": 8, "num_layers": 1, "max_len": 6, "num_epochs": 2, "progress": False, "seed": 0}
    first, epoch = finetune.cached_sasrec(sequences, NUM_ITEMS, None, settings, str(tmp_path))
    again, again_epoch = finetune.cached_sasrec(sequences, NUM_ITEMS, None, settings, str(tmp_path))
    assert len(calls) == 1 and epoch == again_epoch == 2
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    finetune.cached_sasrec(sequences, NUM_ITEMS, None, {**settings, "seed": 1}, str(tmp_path))
    sequences["u0"] = sequences["u0"][:-1]
    finetune.cached_sasrec(sequences, NUM_ITEMS, None, settings, str(tmp_path))
    assert len(calls) == 3  # a new seed or changed data trains anew
