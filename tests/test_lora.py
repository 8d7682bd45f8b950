"""LoRA helper: only LoRA + MRC + SPAE train, the trainable MRC/SPAE copies are the ones used in forward, and
adapter save/load and merge reproduce the logits, for Llama- and GPT-2-style backbones."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_speeder
from peft import PeftModel

from speeder_hf import SpeederForSequentialRec
from speeder_hf.training.lora import apply_lora, merge_lora

PROMPT = "a user <|pos_1|><item> <|pos_2|><item> candidates ( A ) <item> ( B ) <item> answer :"
ITEMS = torch.tensor([1, 2, 5, 6])
RECENCY = torch.tensor([2, 1, 0, 0])


def logits(model, tokenizer):
    enc = tokenizer([PROMPT, PROMPT.replace("( B ) <item>", "")], return_tensors="pt", padding=True)
    items = torch.cat([ITEMS, ITEMS[:3]])
    recency = torch.cat([RECENCY, RECENCY[:3]])
    with torch.no_grad():
        return model(**enc, item_ids=items, item_recency=recency).logits


def perturb_(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))


def trained_copy(peft_model: PeftModel, name: str) -> torch.nn.Module:
    return getattr(peft_model.base_model.model, name).modules_to_save["default"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_lora_mrc_spae_and_pointer_train(arch):
    model, _ = tiny_speeder(arch)
    peft_model = apply_lora(model, r=4)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    groups = {
        "lora": [n for n in trainable if "lora_" in n],
        "mrc": [n for n in trainable if ".mrc.modules_to_save.default." in n],
        "spae": [n for n in trainable if ".spae.modules_to_save.default." in n],
        "candidate_pointer": [n for n in trainable if ".candidate_pointer.modules_to_save.default." in n],
    }
    assert all(groups.values()), groups
    assert sorted(sum(groups.values(), [])) == sorted(trainable)
    assert all(n.startswith("base_model.model.language_model.") for n in groups["lora"])
    # Every MRC / SPAE / pointer weight trains (gate, experts, norm, absolute and relative embeddings, query, key).
    for name in ("mrc", "spae", "candidate_pointer"):
        assert len(groups[name]) == len(list(trained_copy(peft_model, name).parameters()))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_forward_uses_the_trainable_copies(arch):
    model, tokenizer = tiny_speeder(arch)
    before = logits(model, tokenizer)
    peft_model = apply_lora(model, r=4).eval()
    # LoRA B starts at zero and the copies equal the originals: nothing changes yet.
    torch.testing.assert_close(logits(peft_model, tokenizer), before, atol=1e-6, rtol=0)
    # SPAE is reached through method calls (embed_positions, add_recency), MRC through __call__.
    for seed, name in enumerate(("spae", "mrc")):
        reference = logits(peft_model, tokenizer)
        perturb_(trained_copy(peft_model, name), seed)
        assert not torch.allclose(logits(peft_model, tokenizer), reference, atol=1e-4), name

    peft_model.train()
    peft_model.config.answer_loss = "vocab"  # language-model labels on every token
    enc = tokenizer([PROMPT], return_tensors="pt")
    out = peft_model(**enc, item_ids=ITEMS, item_recency=RECENCY, labels=enc["input_ids"])
    out.loss.backward()
    for name in ("spae", "mrc"):
        copy, original = trained_copy(peft_model, name), getattr(peft_model.base_model.model, name).original_module
        assert all(p.grad is not None for p in copy.parameters() if p.requires_grad)
        assert all(p.grad is None and not p.requires_grad for p in original.parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapter_reload_and_merge_give_identical_logits(tmp_path, arch):
    model, tokenizer = tiny_speeder(arch)
    model.save_pretrained(tmp_path / "base")
    peft_model = apply_lora(model, r=4).eval()
    # Make every trainable part differ from the base so a part that fails to save or merge shows up.
    for seed, param in enumerate(p for p in peft_model.parameters() if p.requires_grad):
        with torch.no_grad():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
    expected = logits(peft_model, tokenizer)
    assert not torch.allclose(expected, logits(SpeederForSequentialRec.from_pretrained(tmp_path / "base"), tokenizer))

    peft_model.save_pretrained(tmp_path / "adapter")
    base = SpeederForSequentialRec.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, tokenizer), expected, atol=1e-5, rtol=0)

    merged = merge_lora(peft_model)
    assert type(merged) is SpeederForSequentialRec
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        logits(SpeederForSequentialRec.from_pretrained(tmp_path / "merged"), tokenizer), expected, atol=1e-5, rtol=0
    )


def test_apply_lora_rejects_targets_outside_the_language_model():
    model, _ = tiny_speeder()
    # MRC is a module to save, so its layers can never receive LoRA even when named explicitly.
    with pytest.raises(ValueError, match="No modules were targeted"):
        apply_lora(model, target_modules=r"mrc\.experts\.0\.fc1")
    with pytest.raises(TypeError, match="already has adapters"):
        apply_lora(apply_lora(tiny_speeder()[0]))
