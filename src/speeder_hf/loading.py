"""Loading a saved Speeder model together with its tokenizer, checked against each other."""

from __future__ import annotations

from transformers import AutoTokenizer

from .modeling_speeder import SpeederForSequentialRec
from .spae import check_tokenizer


def load_model_and_tokenizer(path: str, **model_kwargs) -> tuple[SpeederForSequentialRec, object]:
    """Loads `SpeederForSequentialRec` and the tokenizer saved beside it.

    Raises:
        ValueError: when the tokenizer's Speeder token ids disagree with the config (a base-LLM tokenizer, or tokens
            added in another order).
    """
    model = SpeederForSequentialRec.from_pretrained(path, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, model.config)
    return model, tokenizer


__all__ = ["load_model_and_tokenizer"]
