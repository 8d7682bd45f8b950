"""Self-contained model directories: trust_remote_code export, catalog saved with the model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_fresh_python, tiny_speeder
from safetensors.torch import load_file, save_file

from speeder_hf.catalog import ItemCatalog
from speeder_hf.export import (
    REMOTE_CODE_AUTO_MAP,
    add_remote_code,
    check_remote_code_imports,
    load_catalog_for,
    load_pretrained_bundle,
    remote_code_files,
    save_pretrained_bundle,
)
from speeder_hf.lora import apply_lora


def _sample_inputs(model, tokenizer):
    """Two right-padded prompts with history and candidate placeholders, plus their catalog rows."""
    pos = model.config.position_tokens
    texts = [
        f"a user {pos[0]} <item> {pos[1]} <item> candidates (A) <item> (B) <item> answer :",
        f"a user {pos[0]} <item> candidates (A) <item> (B) <item> (C) <item> answer :",
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    item_ids = torch.tensor([4, 7, 1, 2, 3, 9, 8, 5])
    recency = torch.tensor([2, 1, 0, 0, 1, 0, 0, 0])
    return {**batch, "item_ids": item_ids, "item_recency": recency}


def test_remote_code_files_are_the_import_graph_of_modeling():
    names = [p.name for p in remote_code_files()]
    assert names[:2] == ["configuration_speeder.py", "modeling_speeder.py"]
    assert set(names) == {
        "configuration_speeder.py",
        "modeling_speeder.py",
        "candidate_pointer.py",
        "collaborative_prior.py",
        "content_prior.py",
        "modeling_sasrec.py",
        "mrc.py",
        "spae.py",
        "item_features.py",
    }


@pytest.mark.parametrize(
    "source, culprit",
    [
        ("import numpy as np\n", "numpy"),
        ("from speeder_hf.catalog import ItemCatalog\n", "speeder_hf.catalog"),
        ("try:\n    import speeder_hf\nexcept ImportError:\n    pass\n", "speeder_hf"),
    ],
)
def test_check_remote_code_imports_rejects_outside_imports(tmp_path, source, culprit):
    path = tmp_path / "modeling_bad.py"
    path.write_text("import torch\nfrom .mrc import X\n" + source)
    with pytest.raises(ImportError, match=culprit):
        check_remote_code_imports(path)


def test_add_remote_code_writes_auto_map_and_files(tmp_path):
    model, tokenizer = tiny_speeder()
    model.save_pretrained(tmp_path)
    copied = add_remote_code(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == REMOTE_CODE_AUTO_MAP
    assert sorted(p.name for p in copied) == sorted(p.name for p in remote_code_files())
    assert all((tmp_path / p.name).is_file() for p in copied)


def test_add_remote_code_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        add_remote_code(tmp_path)


# Runs in a child interpreter that cannot import speeder_hf: `-I` drops user site and PYTHON* variables, then the
# editable install's path entry and any speeder finder are removed before transformers is imported.
_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "speeder_hf").exists()]
    sys.meta_path[:] = [f for f in sys.meta_path if "speeder" not in repr(f).lower()]
    try:
        import speeder_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("speeder_hf is still importable in the isolated interpreter")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM

    model_dir, inputs_path, out_path = sys.argv[1:]
    inputs = load_file(inputs_path)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    causal = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert "speeder_hf" not in sys.modules
    with torch.no_grad():
        logits = model(**inputs).logits
        causal_logits = causal(**inputs).logits
    save_file({"logits": logits.contiguous(), "causal_logits": causal_logits.contiguous()}, out_path)
    """
)


def test_trust_remote_code_load_without_the_package_gives_identical_logits(tmp_path):
    model, tokenizer = tiny_speeder()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    add_remote_code(model_dir)

    inputs = _sample_inputs(model, tokenizer)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    (tmp_path / "child.py").write_text(_CHILD)
    run_fresh_python(
        [
            "-I",
            str(tmp_path / "child.py"),
            str(model_dir),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "out.safetensors"),
        ],
        cwd=tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),  # the dynamic-module copy goes to the tmp dir
        PYTHONNOUSERSITE="1",
    )
    with torch.no_grad():
        expected = model(**inputs).logits
    out = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["causal_logits"], expected, atol=1e-5, rtol=1e-5)
    assert Path(tmp_path / "modules").is_dir()


def _catalog(n: int) -> ItemCatalog:
    catalog = ItemCatalog([f"I{i}" for i in range(n)], [f"title {i}" for i in range(n)], image_paths=["/x.jpg"] * n)
    catalog.add_features("text", torch.zeros(n, 4))
    return catalog


def test_bundle_round_trip(tmp_path):
    model, tokenizer = tiny_speeder(num_items=30)
    inputs = _sample_inputs(model, tokenizer)
    save_pretrained_bundle(model, tmp_path, tokenizer, _catalog(30), remote_code=False)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    loaded, loaded_tokenizer, catalog, sasrec = load_pretrained_bundle(tmp_path)
    assert sasrec is None
    assert catalog.item_ids == [f"I{i}" for i in range(30)] and catalog.titles[4] == "title 4"
    # Only the index is published: no features (the model holds them) and no local image paths.
    assert catalog.modalities == [] and set(catalog.image_paths) == {None}
    assert loaded_tokenizer.convert_tokens_to_ids("<item>") == model.config.item_token_id
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_bundle_refuses_a_catalog_of_another_size(tmp_path):
    model, tokenizer = tiny_speeder(num_items=30)
    with pytest.raises(ValueError, match="Catalog size mismatch: the catalog has 31 items.*30 items"):
        save_pretrained_bundle(model, tmp_path, tokenizer, _catalog(31))
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="No item_catalog.json in"):
        load_catalog_for(model, tmp_path)


def test_bundle_merges_lora_so_plain_loading_gives_the_trained_model(tmp_path):
    model, tokenizer = tiny_speeder(num_items=30)
    inputs = _sample_inputs(model, tokenizer)
    peft_model = apply_lora(model).eval()  # eval: no LoRA dropout
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters change the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        expected = peft_model(**inputs).logits
        assert not torch.allclose(expected, tiny_speeder(num_items=30)[0](**inputs).logits, atol=1e-4)
    save_pretrained_bundle(peft_model, tmp_path, tokenizer, _catalog(30), remote_code=False)
    loaded, *_ = load_pretrained_bundle(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
