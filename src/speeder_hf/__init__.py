"""speeder_hf: Speeder (MRC + SPAE + MPO) multimodal-LLM sequential recommendation for Hugging Face.

Importing the package registers `SpeederConfig` / `SpeederForSequentialRec` with `AutoConfig`, `AutoModel`
and `AutoModelForCausalLM` (so `AutoModel.from_pretrained(path)` loads a saved Speeder model) and the
`sequential-recommendation` pipeline.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import pipeline_speeder  # noqa: F401  (registers the "sequential-recommendation" pipeline)
from .catalog import ItemCatalog
from .collator import SpeederDataCollator
from .configuration_speeder import SpeederConfig
from .evaluation import evaluate_ranking
from .lora import apply_lora, merge_lora
from .modeling_speeder import SpeederCausalLMOutput, SpeederForSequentialRec, SpeederPreTrainedModel
from .mpo import Stage, default_stages, run_mpo
from .mrc import MixtureOfModalityExperts
from .prompts import PromptBuilder
from .recommend import Recommender
from .sasrec import SASRec, train_sasrec
from .spae import SequentialPositionEncoding, add_speeder_tokens, check_tokenizer
from .trainer import SpeederTrainer

AutoConfig.register(SpeederConfig.model_type, SpeederConfig, exist_ok=True)
AutoModel.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
AutoModelForCausalLM.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "ItemCatalog",
    "MixtureOfModalityExperts",
    "PromptBuilder",
    "Recommender",
    "SASRec",
    "SequentialPositionEncoding",
    "SpeederCausalLMOutput",
    "SpeederConfig",
    "SpeederDataCollator",
    "SpeederForSequentialRec",
    "SpeederPreTrainedModel",
    "SpeederTrainer",
    "Stage",
    "add_speeder_tokens",
    "apply_lora",
    "check_tokenizer",
    "default_stages",
    "evaluate_ranking",
    "merge_lora",
    "run_mpo",
    "train_sasrec",
]
