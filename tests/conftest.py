"""Tiny in-process models and tokenizers (no hub, seconds to run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from speeder_hf.testing import tiny_causal_lm, word_level_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "a user interacted with these items in order which item will the next candidates answer title "
    "lipstick mascara shampoo soap cream brush nail polish red blue green pink gel oil mask"
).split()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(WORDS)


def tiny_llm(arch: str = "llama", vocab_size: int = 128, tie: bool = True):
    return tiny_causal_lm(vocab_size, arch, tie)


def run_fresh_python(args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    """Runs `python *args` in a new process (offline, quiet transformers) and fails the test on a non-zero exit,
    showing the child's stderr."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **env}
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


TINY_MODALITIES = {"modalities": ["text", "image", "id"], "modality_dims": [12, 10, 8]}


def tiny_speeder(arch: str = "llama", tie: bool = True, num_items: int = 30, **config_kwargs):
    """A tiny Speeder model with a random catalog of `num_items` items (item 3 has no image)."""
    from speeder_hf import SpeederForSequentialRec

    tokenizer = tiny_tokenizer()
    kwargs = {
        **TINY_MODALITIES,
        "mrc_hidden_size": 16,
        "gate_hidden_size": 8,
        "max_history_len": 8,
        "num_candidates": 5,
        **config_kwargs,
    }
    model = SpeederForSequentialRec.from_llm(tiny_llm(arch, tie=tie), tokenizer, **kwargs)
    generator = torch.Generator().manual_seed(1)
    features = {
        m: torch.randn(num_items, d, generator=generator)
        for m, d in zip(model.config.modalities, model.config.modality_dims)
    }
    presence = torch.ones(num_items, len(model.config.modalities), dtype=torch.bool)
    if "image" in model.config.modalities:
        presence[3, model.config.modalities.index("image")] = False
    model.set_item_features(features, presence)
    return model.eval(), tokenizer


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a shared, busy machine two spinning threads made each tiny
    Trainer step ~100x slower (3.5 s instead of 0.05 s). Tests on real models ask for more threads themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_and_tokenizer():
    """A tiny Llama-backed Speeder model (eval mode) and its extended tokenizer."""
    return tiny_speeder()
