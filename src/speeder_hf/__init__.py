"""speeder_hf: Speeder (MRC + SPAE + MPO) multimodal-LLM sequential recommendation for Hugging Face.

Importing the package registers `SpeederConfig` / `SpeederForSequentialRec` with `AutoConfig`, `AutoModel`
and `AutoModelForCausalLM` (so `AutoModel.from_pretrained(path)` loads a saved Speeder model) and the
`sequential-recommendation` pipeline.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .catalog.item_catalog import ItemCatalog
from .catalog.sasrec import SASRec, train_sasrec
from .evaluation.ranking import evaluate_ranking
from .model.configuration_speeder import SpeederConfig
from .model.modeling_speeder import SpeederCausalLMOutput, SpeederForSequentialRec, SpeederPreTrainedModel
from .model.mrc import MixtureOfModalityExperts
from .model.spae import SequentialPositionEncoding, add_speeder_tokens, check_tokenizer
from .processing.collator import SpeederDataCollator
from .processing.prompts import PromptBuilder
from .serving import pipeline_speeder  # noqa: F401  (registers the "sequential-recommendation" pipeline)
from .serving.recommend import Recommender
from .training.lora import apply_lora, merge_lora
from .training.mpo import Stage, default_stages, run_mpo
from .training.trainer import SpeederTrainer

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
