"""ItemCatalog: feature validation, tensors for the model, id/title lookup, safetensors + JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODALITIES, tiny_speeder

from speeder_hf.catalog.item_catalog import CATALOG_JSON, ItemCatalog
from speeder_hf.data import RecDataset


def small_catalog() -> ItemCatalog:
    rec = RecDataset.from_sequences(
        "t",
        {"u": ["a", "b", "c"]},
        item_info={"a": {"title": "Red Gel", "text": "Red Gel. Nails."}, "b": {"title": "Pink Oil"}, "c": {}},
    )
    return ItemCatalog.from_dataset(rec)


def test_from_dataset_and_lookup():
    catalog = small_catalog()
    assert len(catalog) == 3 and catalog.item_ids == ["a", "b", "c"]
    assert catalog.titles == ["Red Gel", "Pink Oil", None] and catalog.texts[0] == "Red Gel. Nails."
    assert catalog.indices(["c", "a"]) == [2, 0]
    assert catalog.resolve("b") == 1 and catalog.resolve("  pink OIL ") == 1
    with pytest.raises(KeyError, match="Unknown item id 'z'"):
        catalog.index("z")
    with pytest.raises(KeyError, match="neither an item id nor a title"):
        catalog.resolve("blue soap")
    twins = ItemCatalog(["x", "y"], titles=["Soap", "soap"])
    with pytest.raises(KeyError, match=r"Title 'Soap' is ambiguous: items \['x', 'y'\]"):
        twins.resolve("Soap")
    with pytest.raises(ValueError, match="not unique"):
        ItemCatalog(["x", "x"])


def test_add_features_validates_and_zeroes_absent_rows():
    catalog = small_catalog()
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    values[2] = np.nan  # absent row: allowed, stored as zeros
    catalog.add_features("image", values, [True, True, False], {"encoder": "x"})
    assert catalog.features["image"][2].tolist() == [0.0, 0.0]
    assert catalog.presence["image"].tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"NaN or inf for items \['b'\] \(rows \[1\]\)"):
        catalog.add_features("text", np.array([[0.0], [np.inf], [1.0]]))
    with pytest.raises(ValueError, match=r"must be \(num_items=3, d\), got \(2, 4\)"):
        catalog.add_features("text", np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Presence of modality 'text' must be \(3,\)"):
        catalog.add_features("text", np.zeros((3, 4)), [True])


def test_feature_tensors_follow_the_requested_order():
    catalog = small_catalog()
    catalog.add_features("id", torch.ones(3, 4))
    catalog.add_features("text", np.full((3, 5), 2.0), [True, True, False])
    features, presence = catalog.feature_tensors(["text", "id"])
    assert list(features) == ["text", "id"]
    assert features["text"].dtype == torch.float32 and features["text"].shape == (3, 5)
    assert presence.tolist() == [[True, True], [True, True], [False, True]]
    assert catalog.modality_dims(["text", "id"]) == [5, 4]
    with pytest.raises(KeyError, match=r"no \['image'\] features \(it has \['id', 'text'\]\)"):
        catalog.feature_tensors(["image"])


def test_save_load_roundtrip(tmp_path):
    catalog = small_catalog()
    catalog.add_features("text", np.random.default_rng(0).normal(size=(3, 5)), source={"encoder": "minilm"})
    catalog.add_features("id", np.ones((3, 2)), [False, True, True])
    catalog.save(tmp_path)
    assert json.loads((tmp_path / CATALOG_JSON).read_text())["modalities"] == ["text", "id"]
    again = ItemCatalog.load(tmp_path)
    assert again.item_ids == catalog.item_ids and again.titles == catalog.titles and again.texts == catalog.texts
    assert again.modalities == ["text", "id"] and again.sources == catalog.sources
    for m in catalog.modalities:
        np.testing.assert_array_equal(again.features[m], catalog.features[m])
        np.testing.assert_array_equal(again.presence[m], catalog.presence[m])


def test_catalog_installs_into_a_model():
    num_items = 6
    catalog = ItemCatalog([f"i{k}" for k in range(num_items)])
    rng = np.random.default_rng(1)
    for modality, dim in zip(TINY_MODALITIES["modalities"], TINY_MODALITIES["modality_dims"]):
        present = np.ones(num_items, dtype=bool)
        present[2] = modality != "image"
        catalog.add_features(modality, rng.normal(size=(num_items, dim)), present)
    model, _ = tiny_speeder(num_items=num_items)
    model.set_item_features(*catalog.feature_tensors(model.config.modalities))
    features, mask = model.item_table(torch.tensor([2, 5]))
    torch.testing.assert_close(features[0], torch.from_numpy(catalog.features["text"][[2, 5]]))
    assert mask.tolist() == [[True, False, True], [True, True, True]]


def test_from_catalog_builds_a_model_holding_the_catalog():
    from conftest import tiny_llm, tiny_tokenizer

    from speeder_hf import SpeederForSequentialRec

    catalog = ItemCatalog([f"i{k}" for k in range(6)])
    rng = np.random.default_rng(2)
    for modality, dim in zip(TINY_MODALITIES["modalities"], TINY_MODALITIES["modality_dims"]):
        catalog.add_features(modality, rng.normal(size=(6, dim)), np.ones(6, dtype=bool))
    model = SpeederForSequentialRec.from_catalog(
        tiny_llm(), tiny_tokenizer(), catalog, ["text"], max_history_len=8, num_candidates=5
    )
    assert model.config.modalities == ["text"] and model.config.num_items == 6
    features, _ = model.item_table(torch.tensor([4]))
    torch.testing.assert_close(features[0][0], torch.from_numpy(catalog.features["text"][4]))
    with pytest.raises(KeyError, match=r"no \['audio'\] features"):
        SpeederForSequentialRec.from_catalog(tiny_llm(), tiny_tokenizer(), catalog, ["audio"])
