"""Tiny randomly initialised backbones for unit tests, smoke runs and `--quick` benchmarks: they build in
milliseconds on a CPU and download nothing. Never use them for a reported figure."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

RESERVED_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2, which `tiny_causal_lm` uses as pad / eos / bos
LETTERS = tuple(chr(ord("A") + i) for i in range(26))


def word_level_tokenizer(
    words: Sequence[str], symbols: Sequence[str] = ("(", ")", ":", ",", ".", "\n"), digits: bool = False
) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer over `RESERVED_TOKENS + symbols + A..Z (+ 0..9) + words`;
    unknown words map to `<unk>`. With `digits`, numbers split into single digits (so any number is in-vocabulary)."""
    vocabulary = [*RESERVED_TOKENS, *symbols, *LETTERS, *([str(d) for d in range(10)] if digits else []), *words]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(dict.fromkeys(vocabulary))}, unk_token="<unk>"))
    splitters = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if digits:
        splitters.append(pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splitters)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_causal_lm(vocab_size: int, arch: str = "llama", tie: bool = True, seed: int = 0) -> PreTrainedModel:
    """A 2-layer causal LM (hidden 32, 4 heads), `arch` `"llama"` (2 KV heads, RoPE up to 8192 positions) or
    `"gpt2"` (512 learned positions), seeded."""
    torch.manual_seed(seed)
    special_ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1}
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=8192,
            tie_word_embeddings=tie,
            **special_ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=512, vocab_size=vocab_size, tie_word_embeddings=tie,
            **special_ids,
        )  # fmt: skip
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}.")
    return AutoModelForCausalLM.from_config(config)


__all__ = ["LETTERS", "RESERVED_TOKENS", "tiny_causal_lm", "word_level_tokenizer"]
