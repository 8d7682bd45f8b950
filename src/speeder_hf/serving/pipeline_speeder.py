"""The `sequential-recommendation` pipeline: a user history (item ids or exact titles) in, a ranked list of
`{item_id, title, score}` out.

```python
from transformers import pipeline

# A saved model ships this module as remote code (`speeder_hf.serving.bundle.add_remote_code`); with `import speeder_hf`
# first, the installed package registers it instead and `trust_remote_code` is not needed.
recommend = pipeline("sequential-recommendation", model="path/or/repo", trust_remote_code=True)
recommend(["B0001", "Red lipstick"])                                   # retrieve, then rerank
recommend({"history": ["B0001"], "candidates": ["B0002", "B0003"]})   # rerank the given candidates
recommend([["B0001"], {"history": ["B0004", "B0005"]}], batch_size=8)   # several users
```

Without candidates the pipeline works in two stages (see `speeder_hf.serving.recommend`): a retriever (the SASRec
saved with the model, else similarity in the saved `id` / text features) proposes `config.num_candidates` unseen
items, and the LLM reranks them in one forward pass. `score` is the model's probability of each candidate being
next, among the candidates ranked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from typing import Any

from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import no_collate_fn
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from ..catalog.item_index import ItemIndex
from ..model.modeling_speeder import SpeederForSequentialRec
from .loading import check_catalog_matches, load_item_index_for
from .recommend import ItemRef, Recommender, Retriever, default_retriever

TASK = "sequential-recommendation"


def _is_item(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


class SequentialRecPipeline(Pipeline):
    """Recommends the next items for user histories with a Speeder model.

    Inputs, per user: a list of items (ids or exact titles, oldest first), or a dict `{"history": [...],
    "candidates": [...]}` (candidates optional). A list of those ranks several users; a flat list of items is one
    user's history.

    Args:
        model: a `SpeederForSequentialRec` (loaded by `pipeline(...)` from a directory or repo).
        tokenizer: the tokenizer saved with the model.
        catalog: the model's `ItemCatalog` or `ItemIndex` (features not needed); default: the items of the catalog
            saved with the model.
        retriever: the first stage for requests without candidates; default: the SASRec saved with the model, else
            a `FeatureRetriever` over the model's feature table (`speeder_hf.serving.recommend.default_retriever`).
        candidates (call-time): candidates for every input that has none of its own.
        top_k (call-time): keep the best `top_k` of each ranking (default: all).

    Raises (at call time):
        `speeder_hf.serving.recommend.UnknownItemError`: an item id or title not in the catalog.
        ValueError: empty history, empty or duplicate candidates, too many candidates.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(
        self, model, tokenizer=None, catalog: ItemIndex | None = None, retriever: Retriever | None = None, **kwargs
    ):
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)
        if self.tokenizer is None:
            raise ValueError("The sequential-recommendation pipeline needs the tokenizer saved with the model.")
        if catalog is None:
            catalog = load_item_index_for(self.model)
        else:
            check_catalog_matches(self.model, catalog)
        if retriever is None:
            retriever = default_retriever(self.model)
        self.recommender = Recommender(self.model, self.tokenizer, catalog, retriever)

    def _sanitize_parameters(self, candidates: Sequence[ItemRef] | None = None, top_k: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"Unknown arguments {sorted(kwargs)}; the pipeline takes candidates= and top_k=.")
        preprocess = {"candidates": candidates} if candidates is not None else {}
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, {}, postprocess

    def __call__(self, inputs, **kwargs):
        # A flat list of items is one user's history, not a batch of one-item histories.
        if isinstance(inputs, list | tuple) and inputs and all(_is_item(x) for x in inputs):
            return super().__call__({"history": list(inputs)}, **kwargs)
        if isinstance(inputs, list | tuple) and not inputs:
            raise ValueError("Empty history: give at least one item the user interacted with.")
        return super().__call__(list(inputs) if isinstance(inputs, tuple) else inputs, **kwargs)

    def preprocess(self, inputs, candidates: Sequence[ItemRef] | None = None) -> dict[str, Any]:
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"history", "candidates"}
            if unknown or "history" not in inputs:
                raise ValueError(f"An input dict has keys 'history' and optionally 'candidates', got {sorted(inputs)}.")
            history, candidates = inputs["history"], inputs.get("candidates", candidates)
        else:
            history = inputs
        return {"request": self.recommender.prepare(history, candidates)}

    def _forward(self, model_inputs, **forward_params) -> dict[str, Any]:
        batched = isinstance(model_inputs, list)
        requests = [m["request"] for m in model_inputs] if batched else [model_inputs["request"]]
        # Plain lists, so the pipeline's batch unrolling hands each input its own list (tensors would be unsqueezed).
        scores = [s.tolist() for s in self.recommender.score(requests, batch_size=len(requests))]
        if batched:
            return {"request": requests, "scores": scores}
        return {"request": requests[0], "scores": scores[0]}

    def postprocess(self, model_outputs, top_k: int | None = None) -> list[dict[str, Any]]:
        return self.recommender.rank(model_outputs["request"], model_outputs["scores"], top_k)

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        # The base class pads tokenized inputs for batch_size > 1; ours are requests that the collator tokenizes
        # and pads together in `_forward`, so a batch is just the list of them.
        if "TOKENIZERS_PARALLELISM" not in os.environ:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # a generator or iterable dataset: one worker, as in the base class
            dataset, num_workers = PipelineIterator(inputs, self.preprocess, preprocess_params), min(num_workers, 1)
        collate_fn = no_collate_fn if batch_size == 1 else list
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=SequentialRecPipeline, pt_model=SpeederForSequentialRec)

__all__ = ["TASK", "SequentialRecPipeline"]
