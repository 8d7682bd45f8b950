"""User-level recommendation: item ids or titles in, a ranked list of `{item_id, title, score}` out.

Two stages (the usual retrieve-then-rerank design of LLM recommenders):

1. **Retrieve** (only when no candidates are given): a cheap retriever over the whole catalog proposes
   `config.num_candidates` items the user has not interacted with: [`SASRecRetriever`] (the SASRec saved with the
   model scores the whole catalog after the history) or, without one, [`FeatureRetriever`] (similarity to the
   history in the saved `id` features, the SASRec item embeddings, else in the text features).
2. **Rerank**: the Speeder model reads the history and the labelled candidates in one prompt and scores every
   candidate label in one forward pass (`score_candidates`); the scores are softmaxed over the candidates, so
   `score` is the model's probability that the item is the next one, among these candidates. Retrieved candidates
   are scored with the weights the model's `config.retrieved_fusion` fitted for them, where it has them.

Items are named by their external id (the catalog's `item_id`, a string; an int is read as its decimal string) or by
their title (`ItemIndex.resolve`: ids first, then titles matched whole, ignoring case and surrounding spaces).
Internal catalog rows never appear in this API.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..catalog.item_index import ItemIndex
from ..model.modeling_sasrec import SASRecNetwork
from ..processing.collator import SpeederDataCollator
from ..training.prior_calibration import PriorFusion
from .loading import load_item_index_for, load_model_and_tokenizer, load_sasrec_for

ItemRef = str | int


class UnknownItemError(ValueError):
    """An item id or title that the model's catalog does not know."""


class Retriever(Protocol):
    """First stage: proposes candidate rows for each history (rows oldest first), excluding the history items."""

    def retrieve(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]: ...


def _exclude_and_top(scores: torch.Tensor, history: Sequence[int], k: int) -> list[int]:
    """Top-`k` rows of `scores` `(N,)` outside `history` (fewer when fewer remain)."""
    scores = scores.clone()
    scores[list(history)] = float("-inf")
    available = len(scores) - len(set(history))
    if available == 0:
        raise ValueError("Every catalog item is in the history: nothing is left to recommend.")
    return scores.topk(min(k, available)).indices.tolist()


class SASRecRetriever:
    """Retrieves the items a SASRec scores highest after the history (full-catalog ranking, history excluded)."""

    def __init__(self, sasrec: SASRecNetwork):
        self.sasrec = sasrec.eval()

    @torch.no_grad()
    def retrieve(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        scores = self.sasrec.score_all(self.sasrec.last_hidden(histories)).cpu()  # (B, N)
        return [_exclude_and_top(row, history, k) for row, history in zip(scores, histories)]


class FeatureRetriever:
    """Retrieves by cosine similarity between each catalog item's feature vector and the user's vector, the
    recency-weighted mean (weight 1/r for the r-th most recent item) of the history's unit-normalised vectors.

    With `id` features (SASRec item embeddings) this is item-to-item collaborative retrieval; it needs no model
    beyond the feature table saved with the Speeder model. Items without the modality rank last; history items are
    never retrieved.

    Args:
        features: `(N, d)` feature table.
        presence: `(N,)` bool, which rows have a feature vector.
        modality: the modality name, for messages.
    """

    def __init__(self, features: torch.Tensor, presence: torch.Tensor, modality: str):
        self.features = torch.nn.functional.normalize(features.float(), dim=-1)  # (N, d)
        self.presence = presence.bool()  # (N,)
        self.modality = modality

    @classmethod
    def from_model(cls, model, modality: str | None = None) -> FeatureRetriever:
        """Uses the model's feature table: `modality`, else `id` when any item has it, else `text`, else the first
        modality any item has."""
        config, table = model.config, model.item_table
        present = {m: table.presence[:, i] for i, m in enumerate(config.modalities)}
        if modality is None:
            usable = [m for m in ("id", "text", *config.modalities) if m in present and bool(present[m].any())]
            if not usable:
                raise ValueError("The model's feature table is empty: no item has any modality to retrieve with.")
            modality = usable[0]
        if modality not in present:
            raise ValueError(f"Unknown modality {modality!r}; the model has {config.modalities}.")
        return cls(getattr(table, f"features_{modality}").detach().cpu(), present[modality].cpu(), modality)

    def retrieve(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        """Top-`k` catalog rows per history (fewer when the catalog has fewer unseen items)."""
        found = []
        for history in histories:
            rows = torch.tensor(list(history), dtype=torch.long)
            recency = torch.arange(len(rows), 0, -1, dtype=torch.float32)  # most recent item = 1
            weights = (1.0 / recency) * self.presence[rows]
            user = (weights.unsqueeze(-1) * self.features[rows]).sum(0)  # (d,)
            # Cosines lie in [-1, 1]: -3 puts items without the feature below every item with it.
            scores = torch.where(self.presence, self.features @ user, torch.full_like(self.features[:, 0], -3.0))
            found.append(_exclude_and_top(scores, rows.tolist(), k))
        return found


def retriever_for(model, sasrec=None) -> Retriever:
    """A [`SASRecRetriever`] over `sasrec` when there is one, else a [`FeatureRetriever`] over the model's feature
    table."""
    return SASRecRetriever(sasrec) if sasrec is not None else FeatureRetriever.from_model(model)


def default_retriever(model, path_or_repo: str | None = None) -> Retriever:
    """The retriever of the SASRec saved with the model (`sasrec/` in `path_or_repo`, default the model's
    `name_or_path`) when there is one, else a [`FeatureRetriever`] over the model's feature table."""
    return retriever_for(model, load_sasrec_for(model, path_or_repo))


@dataclass
class Request:
    """One resolved request: catalog rows of the history (oldest first) and of the candidates to rank."""

    history: list[int]
    candidates: list[int]
    retrieved: bool


class Recommender:
    """Ranks candidate items for user histories with a Speeder model.

    Args:
        model: a `SpeederForSequentialRec` whose item feature table holds the catalog (`config.num_items` rows).
        tokenizer: the tokenizer saved with the model.
        catalog: the `ItemIndex` (or `ItemCatalog`) of the model's feature table (same rows; features not needed).
        retriever: first stage used when no candidates are given (None: candidates are required).
        batch_size: prompts per forward pass.

    Raises:
        ValueError: if the catalog size differs from the model's table, or the model answers with titles (ranking
            needs the label scores of `answer_mode="index"`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        catalog: ItemIndex,
        retriever: Retriever | None = None,
        batch_size: int = 8,
    ):
        config = model.config
        if len(catalog.item_ids) != config.num_items:
            raise ValueError(
                f"The catalog has {len(catalog.item_ids)} items but the model's feature table has {config.num_items}: "
                "they come from different catalogs."
            )
        if config.answer_mode != "index":
            raise ValueError(
                f"This model answers with titles (answer_mode={config.answer_mode!r}); ranking needs the candidate "
                "label scores of answer_mode='index'. Use speeder_hf.evaluation.ranking.evaluate_ranking or "
                "model.generate."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.retriever = retriever
        self.batch_size = batch_size
        self.collator = SpeederDataCollator(
            tokenizer,
            config,
            item_titles=list(catalog.titles),
            item_texts=list(catalog.texts),
            mode="eval",
            return_metadata=False,
        )

    @classmethod
    def from_pretrained(cls, path_or_repo: str, batch_size: int = 8, **from_pretrained_kwargs: Any) -> Recommender:
        """Loads a directory (or Hub repo) saved by `speeder_hf.serving.bundle.save_pretrained_bundle`: the model and
        its tokenizer, the catalog's items and the default retriever ([`default_retriever`])."""
        model, tokenizer = load_model_and_tokenizer(path_or_repo, **from_pretrained_kwargs)
        model.eval()
        catalog = load_item_index_for(model, path_or_repo)
        return cls(model, tokenizer, catalog, default_retriever(model, path_or_repo), batch_size=batch_size)

    @property
    def max_candidates(self) -> int:
        return len(self.model.config.label_token_ids)

    # ----- items ----------------------------------------------------------------------------------------------
    def resolve(self, item: ItemRef) -> int:
        """The catalog row of an item id or title (`ItemIndex.resolve`).

        Raises:
            UnknownItemError: neither an id nor a title matches, or the title is shared by several items.
        """
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise UnknownItemError(f"Items are named by id or title (str or int), got {type(item).__name__} {item!r}.")
        try:
            return self.catalog.resolve(str(item))
        except KeyError as error:
            message = str(error.args[0]).rstrip(".")
            raise UnknownItemError(f"{message} ({len(self.catalog)} items in the model's catalog).") from None

    def describe(self, row: int) -> dict[str, Any]:
        return {"item_id": self.catalog.item_ids[row], "title": self.catalog.titles[row]}

    # ----- the three steps ------------------------------------------------------------------------------------
    def prepare(self, history: Sequence[ItemRef], candidates: Sequence[ItemRef] | None = None) -> Request:
        """Resolves a history (oldest first) and optional candidates to catalog rows; retrieves candidates when
        none are given.

        Raises:
            ValueError: empty history or candidates, duplicate candidates, more candidates than the model has
                labels, or no candidates and no retriever. `UnknownItemError` for unknown items.
        """
        if isinstance(history, str | int) or not len(history):
            raise ValueError(
                "Empty history: give at least one item the user interacted with, as a list of ids or titles "
                f"(oldest first); got {history!r}."
            )
        rows = [self.resolve(item) for item in history]
        if candidates is None:
            if self.retriever is None:
                raise ValueError("No candidates given and no retriever configured: pass candidates.")
            k = min(self.model.config.num_candidates, self.max_candidates)
            (found,) = self.retriever.retrieve([rows], k)
            return Request(rows, found, retrieved=True)
        if isinstance(candidates, str | int) or not len(candidates):
            raise ValueError(f"candidates must be a non-empty list of item ids or titles, got {candidates!r}.")
        candidate_rows = [self.resolve(item) for item in candidates]
        if len(set(candidate_rows)) != len(candidate_rows):
            seen, duplicates = set(), []
            for item, row in zip(candidates, candidate_rows):
                if row in seen:
                    duplicates.append(item)
                seen.add(row)
            raise ValueError(f"Duplicate candidates {duplicates}: each candidate must appear once.")
        if len(candidate_rows) > self.max_candidates:
            raise ValueError(
                f"{len(candidate_rows)} candidates, but the model labels at most {self.max_candidates} per prompt."
            )
        return Request(rows, candidate_rows, retrieved=False)

    @torch.no_grad()
    def score(self, requests: Sequence[Request], batch_size: int | None = None) -> list[torch.Tensor]:
        """Softmax scores of each request's candidates `(C_i,)`, in candidate order; `batch_size` (default the
        recommender's) prompts per forward pass. Retrieved and given candidates are scored in separate batches, each
        with its own weights (`config.retrieved_fusion` for retrieved ones, where the model has it)."""
        batch_size = batch_size or self.batch_size
        scores: list[torch.Tensor | None] = [None] * len(requests)
        for retrieved in (False, True):
            indices = [i for i, r in enumerate(requests) if r.retrieved == retrieved]
            with self._weights_for(retrieved):
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    for i, row_scores in zip(chunk, self._score_chunk([requests[i] for i in chunk])):
                        scores[i] = row_scores
        return scores

    def _score_chunk(self, chunk: Sequence[Request]) -> list[torch.Tensor]:
        # The prompt does not depend on the target; the collator only needs one among the candidates.
        rows = [{"history": r.history, "candidates": r.candidates, "target": r.candidates[0]} for r in chunk]
        batch = {key: value.to(self.model.device) for key, value in self.collator(rows).items()}
        width = max(len(r.candidates) for r in chunk)
        logits = self.model.score_candidates(num_candidates=width, **batch)  # (B, width)
        # A row with fewer candidates than `width` never saw the extra labels; they take no part in its softmax.
        return [row[: len(r.candidates)].softmax(-1).cpu() for row, r in zip(logits, chunk)]

    def _weights_for(self, retrieved: bool) -> AbstractContextManager:
        """The score weights for retrieved candidates (`config.retrieved_fusion`) while scoring them; the model's
        own weights otherwise."""
        weights = self.model.config.retrieved_fusion
        if not retrieved or not weights or not self.model.config.uses_candidate_priors:
            return nullcontext()
        fusion = PriorFusion.of(self.model)
        return fusion.weights_applied({name: value for name, value in weights.items() if name in fusion.names})

    def rank(self, request: Request, scores: torch.Tensor, top_k: int | None = None) -> list[dict[str, Any]]:
        """The request's candidates sorted by score (ties keep candidate order), as `{item_id, title, score}`."""
        order = sorted(range(len(request.candidates)), key=lambda i: -float(scores[i]))
        return [{**self.describe(request.candidates[i]), "score": float(scores[i])} for i in order[:top_k]]

    def recommend(
        self,
        histories: Sequence[Sequence[ItemRef]],
        candidates: Sequence[Sequence[ItemRef] | None] | None = None,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Ranked recommendations for several users at once.

        Args:
            histories: per user, the items interacted with, oldest first (ids or exact titles).
            candidates: per user, the items to rank (None, or a None entry: retrieve them).
            top_k: keep the best `top_k` (None: all candidates).
        """
        candidates = candidates if candidates is not None else [None] * len(histories)
        if len(candidates) != len(histories):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists.")
        requests = [self.prepare(h, c) for h, c in zip(histories, candidates)]
        return [self.rank(r, s, top_k) for r, s in zip(requests, self.score(requests))]


__all__ = [
    "FeatureRetriever",
    "SASRecRetriever",
    "default_retriever",
    "retriever_for",
    "ItemRef",
    "Recommender",
    "Request",
    "Retriever",
    "UnknownItemError",
]
