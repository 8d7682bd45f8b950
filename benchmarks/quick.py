"""The tiny backbone and synthetic data of `--quick` runs (smoke tests; never a reported figure)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.catalog.sasrec import sasrec_item_features, train_sasrec
from speeder_hf.data import RecDataset, make_split, training_sequences

from .bench_data import BenchData

QUICK_NOUNS = "lipstick mascara shampoo soap cream brush nail polish gel oil mask".split()
QUICK_COLORS = "red blue green pink".split()
QUICK_WORDS = (
    (
        "a user interacted with these items oldest first which item will the next candidates answer this has in "
        "previous please predict interact choose from following beauty makeup"
    ).split()
    + QUICK_NOUNS
    + QUICK_COLORS
)


def write_tiny_backbone(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 32) and a word-level tokenizer, saved as a plain folder that
    `--llm` can point at (quick runs and tests: seconds, no download)."""
    from speeder_hf.testing import tiny_causal_lm, word_level_tokenizer

    tokenizer = word_level_tokenizer(QUICK_WORDS, symbols=list("()[]:,.?>\n"), digits=True)
    tiny_causal_lm(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=2)
def synthetic_data(
    name: str = "synthetic",
    num_users: int = 40,
    num_items: int = 150,
    min_len: int = 6,
    max_len: int = 60,
    image_cells: int = 4,
    image_channels: int = 8,
    seed: int = 0,
) -> BenchData:
    """A small random dataset for `--quick` runs: titled items, user sequences of `min_len..max_len` distinct items,
    random text (12-d) and image (10-d) features and feature maps, and 2-epoch SASRecs (8-d): the full one and the
    held-out one, whose item embeddings are `id`."""
    rng = np.random.default_rng(seed)
    nouns, colors = QUICK_NOUNS, QUICK_COLORS
    item_ids = [str(i + 1) for i in range(num_items)]
    info = {
        item: {
            "title": f"{nouns[i % len(nouns)]} {colors[i % len(colors)]} {i}",
            "text": f"{nouns[i % len(nouns)]} {colors[i % len(colors)]} {i}. beauty > makeup.",
        }
        for i, item in enumerate(item_ids)
    }
    lengths = np.linspace(min_len, max_len, num_users).astype(int)
    sequences = {f"u{u}": [item_ids[i] for i in rng.permutation(num_items)[:n]] for u, n in enumerate(lengths)}
    rec = RecDataset.from_sequences(name, sequences, item_ids=item_ids, item_info=info)
    catalog = ItemCatalog.from_dataset(rec)
    for modality, dim in (("text", 12), ("image", 10)):
        catalog.add_features(modality, rng.normal(size=(num_items, dim)), source={"encoder": "random (quick)"})
    split = make_split(rec, num_candidates=20, seed=seed)
    sasrec, held_out = (
        train_sasrec(
            sequences, rec.num_items, split["validation"], hidden_size=8, num_epochs=2, eval_every=1, seed=seed,
            device="cpu", progress=False,
        ).model
        for sequences in (training_sequences(rec), training_sequences(rec, holdout=1))
    )  # fmt: skip
    features = sasrec_item_features(held_out, training_sequences(rec, holdout=1))
    catalog.add_features("id", *features, source={"encoder": "sasrec", "held_out_last_training_item": True})
    spatial = rng.normal(size=(num_items, image_cells, image_channels)).astype(np.float32)
    return BenchData(name, rec, catalog, spatial, sasrec, {"source": "synthetic random data (--quick)"}, held_out)
