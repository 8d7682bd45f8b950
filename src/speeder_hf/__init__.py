"""speeder_hf: Speeder (MRC + SPAE + MPO) multimodal-LLM sequential recommendation for Hugging Face.

Importing the package registers `SpeederConfig` / `SpeederForSequentialRec` with `AutoConfig`, `AutoModel`
and `AutoModelForCausalLM`, so `AutoModel.from_pretrained(path)` loads a saved Speeder model.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_speeder import SpeederConfig
from .modeling_speeder import SpeederCausalLMOutput, SpeederForSequentialRec, SpeederPreTrainedModel
from .mrc import MixtureOfModalityExperts
from .spae import SequentialPositionEncoding, add_speeder_tokens, check_tokenizer

AutoConfig.register(SpeederConfig.model_type, SpeederConfig, exist_ok=True)
AutoModel.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
AutoModelForCausalLM.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "MixtureOfModalityExperts",
    "SequentialPositionEncoding",
    "SpeederCausalLMOutput",
    "SpeederConfig",
    "SpeederForSequentialRec",
    "SpeederPreTrainedModel",
    "add_speeder_tokens",
    "check_tokenizer",
]
