"""Baseline recommenders that share Speeder's model class, data, candidates and metric code:

- `LlaraForSequentialRec`: LLaRA's hybrid prompt (`title <item>`, one projected SASRec ID token per item) with
  LLaRA's curriculum from text-only to hybrid prompts (`LlaraCurriculumCallback`, driven by the global step).
- `MLLMForSequentialRec`: an uncompressed, LLaVA-like multimodal recommender: per item its title, its image as the
  image encoder's spatial feature map projected to one LLM token per map cell (e.g. 7x7 = 49 for EfficientNet-Lite0),
  and the ID token. It stands in for MLLM recommenders that feed raw image tokens.
- `spatial_image_features`: the per-cell image features the `mllm` baseline reads.

The `text` (TALLRec-like) baseline needs no model code: it is the plain model with `prompt_style="text"` and title
answers. SASRec is `speeder_hf.sasrec`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .item_features import check_finite
from .modeling_speeder import SpeederForSequentialRec

if TYPE_CHECKING:  # the encoders (and PIL) are needed only to extract features, not to train or evaluate
    from .encoders import ImageEncoder


class LlaraForSequentialRec(SpeederForSequentialRec):
    """LLaRA (Liao et al., SIGIR 2024) on Speeder's model class: build it with `prompt_style="llara"`,
    `answer_mode="title"`, `modalities=["id"]` (SASRec item embeddings, one projected token per item) and SPAE off.

    `use_item_tokens` switches between LLaRA's two prompts, which have the same tokens: True (hybrid) fills each
    `<item>` placeholder with the item's projected ID token; False (text-only) leaves the placeholder's own token
    embedding in place, as LLaRA's `[PH]` token, so the projector gets no gradient on that step.
    """

    def __init__(self, config):
        super().__init__(config)
        self.use_item_tokens = True

    def embed_inputs(self, input_ids: torch.LongTensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.use_item_tokens:
            return super().embed_inputs(input_ids, *args, **kwargs)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        return self.spae.embed_positions(input_ids, inputs_embeds), None


class LlaraCurriculumCallback(TrainerCallback):
    """LLaRA's curriculum prompt tuning, driven by the global step: step s of S uses the hybrid prompt with
    probability s / S and the text-only prompt otherwise (LLaRA keeps its step counter in the collate function,
    which dataloader workers copy, so released LLaRA restarts the ramp every epoch; the global step does not).
    Evaluation always uses the hybrid prompt.

    Args:
        model: the `LlaraForSequentialRec` being trained (the plain model, also when PEFT wraps it).
        seed: draws are `random.Random(f"{seed}-{step}")`, so a resumed run draws the same prompts.
    """

    def __init__(self, model: LlaraForSequentialRec, seed: int = 0):
        self.model, self.seed = model, seed

    def on_step_begin(self, args, state, control, **kwargs):
        # The forward of this step runs after this hook, so the switch applies to it.
        hybrid_probability = state.global_step / state.max_steps if state.max_steps else 1.0
        self.model.use_item_tokens = random.Random(f"{self.seed}-{state.global_step}").random() < hybrid_probability

    def on_train_end(self, args, state, control, **kwargs):
        self.model.use_item_tokens = True


class SpatialImageProjector(nn.Module):
    """LLaVA-1.5's projector (Linear, GELU, Linear), applied to every cell of an item's image feature map:
    `(n, K, C) -> (n, K, d_llm)`."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(patches)))


class MLLMForSequentialRec(SpeederForSequentialRec):
    """The uncompressed multimodal baseline (`mllm` prompt style): each item is written as
    `{title} <image> x K <item>`; the K image placeholders get the item's K projected feature-map cells and `<item>`
    its ID token (build with `modalities=["id"]`, SPAE off, title answers).

    The projector lives under `mrc` (as `mrc.image_projector`), so MPO's `"mrc"` parameter group and LoRA's
    `modules_to_save` train and save it with the other item projectors. Feature maps are a non-persistent
    `(num_items, K, C)` buffer set by `set_image_patches`; items without an image have an all-zero map.
    """

    def __init__(self, config):
        super().__init__(config)
        self.mrc.image_projector = SpatialImageProjector(config.image_feature_dim, config.text_config.hidden_size)
        self.register_buffer(
            "image_patches",
            torch.zeros(config.num_items, config.num_image_tokens, config.image_feature_dim),
            persistent=False,
        )

    @classmethod
    def from_llm(
        cls,
        llm,
        tokenizer,
        num_image_tokens: int = 49,
        image_feature_dim: int = 1280,
        image_token: str = "<image>",
        **config_kwargs,
    ) -> MLLMForSequentialRec:
        """As `SpeederForSequentialRec.from_llm`, plus the image placeholder token (added to `tokenizer`) and
        `num_image_tokens` feature-map cells of `image_feature_dim` channels per item (recorded in the config)."""
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}.")
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
        model = super().from_llm(
            llm,
            tokenizer,
            image_token=image_token,
            num_image_tokens=num_image_tokens,
            image_feature_dim=image_feature_dim,
            **config_kwargs,
        )
        model.config.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        return model

    def set_image_patches(self, patches: torch.Tensor) -> None:
        """Installs the per-item feature maps `(num_items, K, C)` (rows = catalog rows, zeros for no image)."""
        expected = (self.item_table.num_items, self.config.num_image_tokens, self.config.image_feature_dim)
        if tuple(patches.shape) != expected:
            raise ValueError(f"Image patches must be (num_items, K, C) = {expected}, got {tuple(patches.shape)}.")
        check_finite(patches, "image patches")
        self.image_patches = patches.to(self.image_patches.device, torch.float32)

    @property
    def never_generate_ids(self) -> list[int]:
        return [*super().never_generate_ids, self.config.image_token_id]

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        item_ids: torch.LongTensor | None = None,
        *args,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs_embeds, gate_weights = super().embed_inputs(input_ids, item_ids, *args, **kwargs)
        placeholder = input_ids == self.config.image_token_id  # (B, S)
        n_placeholders = int(placeholder.sum())
        if n_placeholders == 0:
            return inputs_embeds, gate_weights
        if item_ids is None:
            raise ValueError("Image placeholders are filled from catalog rows: pass item_ids.")
        projector = self.mrc.image_projector
        patches = self.image_patches[item_ids].to(projector.fc1.weight.dtype)  # (n, K, C)
        image_tokens = projector(patches)  # (n, K, d)
        if n_placeholders != image_tokens.shape[0] * image_tokens.shape[1]:
            raise ValueError(
                f"The prompts hold {n_placeholders} {self.config.image_token} placeholders but {image_tokens.shape[0]} "
                f"items x {image_tokens.shape[1]} image tokens were given."
            )
        # Row-major order: item j's K cells fill the j-th run of K placeholders.
        inputs_embeds = inputs_embeds.masked_scatter(
            placeholder.unsqueeze(-1).expand_as(inputs_embeds), image_tokens.to(inputs_embeds.dtype)
        )
        return inputs_embeds, gate_weights


@torch.no_grad()
def spatial_image_features(
    encoder: ImageEncoder,
    image_paths: Sequence[str | None],
    grid: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell image features for the `mllm` baseline: the encoder's last feature map, one vector per cell.

    Args:
        encoder: the default EfficientNet-Lite0 `ImageEncoder` (map `1280 x 7 x 7` at 224 px) or one wrapping a
            Hugging Face vision model whose `last_hidden_state` is a map `(B, C, h, w)` or a token sequence
            `(B, T, C)`.
        image_paths: per item, its image file or None.
        grid: when set, the map is average-pooled to `grid x grid` cells (fewer image tokens per item).

    Returns:
        `(N, K, C)` float32 features (zeros for items without an image) and `(N,)` bool presence.

    Raises:
        ImageLoadError: an image file cannot be read (the message names the item row and the file).
    """
    from .encoders import ImageLoadError, load_image

    rows = [row for row, path in enumerate(image_paths) if path is not None]
    if not rows:
        raise ValueError("No item has an image path.")
    chunks: list[tuple[list[int], np.ndarray]] = []
    for start in tqdm(range(0, len(rows), encoder.batch_size), desc="spatial image features", disable=not progress):
        batch_rows = rows[start : start + encoder.batch_size]
        images = []
        for row in batch_rows:
            try:
                images.append(load_image(image_paths[row]))
            except ImageLoadError as error:
                raise ImageLoadError(f"Item row {row}: {error}") from None
        dtype = next(encoder.model.parameters()).dtype
        pixels = encoder._pixels(images).to(encoder.device, dtype)  # (B, 3, H, W), the encoder's own preprocessing
        if encoder.processor is None:
            maps = encoder.model.extract_features(pixels)  # (B, C, h, w)
        else:
            maps = encoder.model(pixel_values=pixels).last_hidden_state
        if maps.dim() == 3:  # (B, T, C) tokens: a square grid of cells, after any leading class token
            side = int(maps.shape[1] ** 0.5)
            maps = maps[:, -side * side :].transpose(1, 2).reshape(maps.shape[0], -1, side, side)
        if grid is not None:
            maps = nn.functional.adaptive_avg_pool2d(maps, grid)
        chunks.append((batch_rows, maps.flatten(2).transpose(1, 2).float().cpu().numpy()))  # (B, K, C)
    _, cells, channels = chunks[0][1].shape
    features = np.zeros((len(image_paths), cells, channels), dtype=np.float32)
    present = np.zeros(len(image_paths), dtype=bool)
    for batch_rows, values in chunks:
        features[batch_rows] = values
        present[batch_rows] = True
    return features, present


__all__ = [
    "LlaraCurriculumCallback",
    "LlaraForSequentialRec",
    "MLLMForSequentialRec",
    "SpatialImageProjector",
    "spatial_image_features",
]
