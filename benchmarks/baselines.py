"""Baseline recommenders that share Speeder's model class, data, candidates and metric code:

- `LlaraForSequentialRec`: LLaRA's hybrid prompt (`title <item>`, one projected SASRec ID token per item) with
  LLaRA's curriculum from text-only to hybrid prompts (`LlaraCurriculumCallback`, driven by the global step).
- `MLLMForSequentialRec`: an uncompressed, LLaVA-like multimodal recommender: per item its title, its image as the
  image encoder's spatial feature map projected to one LLM token per map cell (e.g. 7x7 = 49 for EfficientNet-Lite0),
  and the ID token. It stands in for MLLM recommenders that feed raw image tokens. Its config (`MLLMConfig`), prompt
  style (`MLLMPromptBuilder`, `mllm`) and collator (`MLLMDataCollator`) extend Speeder's, which know nothing of it.
- `spatial_image_features`: the per-cell image features the `mllm` baseline reads.

The `text` (TALLRec-like) baseline needs no model code: it is the plain model with `prompt_style="text"` and title
answers. SASRec is `speeder_hf.catalog.sasrec`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import TrainerCallback

from speeder_hf.model.configuration_speeder import PROMPT_STYLES, SpeederConfig
from speeder_hf.model.item_features import check_finite
from speeder_hf.model.modeling_speeder import SpeederForSequentialRec
from speeder_hf.processing.collator import SpeederDataCollator, check_placeholders
from speeder_hf.processing.prompts import LLARA_TEMPLATE, TEMPLATES, PromptBuilder, RenderedPrompt

if TYPE_CHECKING:  # the encoders (and PIL) are needed only to extract features, not to train or evaluate
    from speeder_hf.catalog.encoders import ImageEncoder


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


class MLLMConfig(SpeederConfig):
    """`SpeederConfig` plus the image tokens of the uncompressed multimodal baseline.

    Args:
        image_token: the image placeholder, one per feature-map cell of an item.
        num_image_tokens: feature-map cells (image tokens) per item.
        image_feature_dim: channels of a cell's feature vector.
        image_token_id: the placeholder's id, recorded by `MLLMForSequentialRec.from_llm`.
        **kwargs: `SpeederConfig`'s arguments; the config's `prompt_style` is `llara`, whose instruction the `mllm`
            style shares, and collators are asked for `prompt_style="mllm"`.
    """

    model_type = "speeder_mllm"

    def __init__(
        self,
        image_token: str = "<image>",
        num_image_tokens: int = 49,
        image_feature_dim: int = 1280,
        image_token_id: int | None = None,
        **kwargs: Any,
    ):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}.")
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        self.image_feature_dim = image_feature_dim
        self.image_token_id = image_token_id
        super().__init__(**kwargs)


class MLLMPromptBuilder(PromptBuilder):
    """Adds the `mllm` prompt style: LLaRA's instruction with each item written as `{title} <image>...<image><item>`,
    `num_image_tokens` image placeholders (one per cell of the image encoder's spatial feature map) and the ID slot.
    Every item gets its image placeholders; the model fills those of an item without an image from an all-zero map.

    Raises:
        ValueError: `config` is not an `MLLMConfig` (it has no image tokens).
    """

    STYLES: ClassVar[tuple[str, ...]] = (*PROMPT_STYLES, "mllm")
    # Same instruction as LLaRA's, so the two baselines differ only in how an item is written.
    TEMPLATES: ClassVar[dict[str, str]] = {**TEMPLATES, "mllm": LLARA_TEMPLATE}
    TITLED_STYLES: ClassVar[tuple[str, ...]] = ("llara", "mllm")

    def __init__(self, config: SpeederConfig, *args: Any, **kwargs: Any):
        if not isinstance(config, MLLMConfig):
            raise ValueError(
                f"The mllm prompt style needs an MLLMConfig (image tokens), got {type(config).__name__}; build the "
                "model with benchmarks.baselines.MLLMForSequentialRec.from_llm."
            )
        super().__init__(config, *args, **kwargs)
        self.image_slot = config.image_token * config.num_image_tokens

    @property
    def has_slots(self) -> bool:
        return self.prompt_style == "mllm" or super().has_slots

    def reserved_tokens(self) -> list[str]:
        return [*super().reserved_tokens(), self.config.image_token]

    def titled_item(self, item: int) -> str:
        if self.prompt_style == "mllm":
            return f"{self.title_of(item)} {self.image_slot}{self.item_slot}"
        return super().titled_item(item)


class MLLMDataCollator(SpeederDataCollator):
    """`SpeederDataCollator` for `MLLMConfig` models: renders with `MLLMPromptBuilder`, so it also takes
    `prompt_style="mllm"`, and checks that every item slot has its `num_image_tokens` image placeholders (the
    model fills them from the same catalog rows as the `<item>` slots)."""

    builder_class: ClassVar[type[PromptBuilder]] = MLLMPromptBuilder

    def check_prompt(self, prompt_ids: list[int], rendered: RenderedPrompt) -> None:
        super().check_prompt(prompt_ids, rendered)
        if self.builder.prompt_style == "mllm":
            check_placeholders(
                prompt_ids,
                self.config.image_token,
                self.config.image_token_id,
                len(rendered.slot_items),
                self.config.num_image_tokens,
            )


class MLLMForSequentialRec(SpeederForSequentialRec):
    """The uncompressed multimodal baseline (`mllm` prompt style): each item is written as
    `{title} <image> x K <item>`; the K image placeholders get the item's K projected feature-map cells and `<item>`
    its ID token (build with `modalities=["id"]`, SPAE off, title answers).

    The projector lives under `mrc` (as `mrc.image_projector`), so MPO's `"mrc"` parameter group and LoRA's
    `modules_to_save` train and save it with the other item projectors. Feature maps are a non-persistent
    `(num_items, K, C)` buffer set by `set_image_patches`; items without an image have an all-zero map.
    """

    config_class = MLLMConfig

    def __init__(self, config: MLLMConfig):
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
        if num_image_tokens < 1:  # before the tokenizer is changed
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
    from speeder_hf.catalog.encoders import ImageLoadError, load_image

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
    "MLLMConfig",
    "MLLMDataCollator",
    "MLLMForSequentialRec",
    "MLLMPromptBuilder",
    "SpatialImageProjector",
    "spatial_image_features",
]
