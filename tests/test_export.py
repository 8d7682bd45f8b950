"""Self-contained model directories: trust_remote_code export, catalog saved with the model."""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_fresh_python, tiny_speeder
from safetensors.torch import load_file, save_file
from test_collaborative_prior import speeder_with_prior
from test_pipeline import tiny_catalog
from transformers import pipeline

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.serving.bundle import (
    REMOTE_CODE_AUTO_MAP,
    REMOTE_CODE_PIPELINES,
    add_remote_code,
    check_remote_code_imports,
    flat_source,
    load_catalog_for,
    load_pretrained_bundle,
    remote_code_files,
    save_pretrained_bundle,
)
from speeder_hf.training.lora import apply_lora


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


MODELING_GRAPH = {
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
# What the pipeline adds: the recommender and its retrievers, the prompts and collator, the fusion of the priors'
# weights for retrieved candidates, and reading the catalog's items and the SASRec saved with the model.
PIPELINE_GRAPH = {
    "pipeline_speeder.py",
    "recommend.py",
    "collator.py",
    "prompts.py",
    "prior_calibration.py",
    "fusion_weights.py",
    "item_index.py",
    "loading.py",
}


def test_remote_code_files_are_the_import_graph_of_modeling_and_the_pipeline():
    names = [p.name for p in remote_code_files()]
    assert names[:3] == ["configuration_speeder.py", "modeling_speeder.py", "pipeline_speeder.py"]
    assert len(names) == len(set(names))
    assert set(names) == MODELING_GRAPH | PIPELINE_GRAPH
    # The modules that import numpy, datasets, tqdm, peft or huggingface_hub stay out of the serving path.
    assert not {"item_catalog.py", "sasrec.py", "bundle.py", "lora.py", "ranking.py"} & set(names)


def test_shipped_code_imports_its_sub_package_siblings_flat(tmp_path):
    """The modules live in sub-packages; in a model directory they lie side by side, so a copy's relative imports
    become flat siblings and nothing else in the file changes."""
    model, _ = tiny_speeder()
    model.save_pretrained(tmp_path)
    copied = {p.name: p for p in add_remote_code(tmp_path)}
    pipeline_source = {p.name: p for p in remote_code_files()}["pipeline_speeder.py"].read_text()
    assert "from ..model.modeling_speeder import" in pipeline_source
    shipped = copied["pipeline_speeder.py"].read_text()
    assert "from .modeling_speeder import" in shipped and "from .." not in shipped
    changed = [(a, b) for a, b in zip(pipeline_source.splitlines(), shipped.splitlines(), strict=True) if a != b]
    assert changed and all(a.lstrip().startswith("from ..") for a, _ in changed)


def test_remote_code_files_refuse_an_import_that_cannot_be_copied_flat(tmp_path):
    path = tmp_path / "pkg" / "modeling_bad.py"
    path.parent.mkdir()
    path.write_text("from . import sibling\n")
    with pytest.raises(ImportError, match="not a module file"):
        flat_source(path)


@pytest.mark.parametrize(
    "source, culprit",
    [
        ("import numpy as np\n", "numpy"),
        ("from tqdm.auto import tqdm\n", "tqdm"),
        ("from safetensors.torch import load_file\n", "safetensors"),
        ("def load():\n    import datasets\n", "datasets"),  # a lazy import is an import too
        ("from speeder_hf.catalog.item_catalog import ItemCatalog\n", "speeder_hf.catalog.item_catalog"),
        ("try:\n    import speeder_hf\nexcept ImportError:\n    pass\n", "speeder_hf"),
        # Relative imports that transformers does not copy along: only `from .sibling import name` travels.
        ("from . import collator\n", "'.'"),
        ("from .data.rec_dataset import RecDataset\n", ".data.rec_dataset"),
        ("from ..speeder_hf import mrc\n", "..speeder_hf"),
    ],
)
def test_check_remote_code_imports_rejects_outside_imports(tmp_path, source, culprit):
    path = tmp_path / "modeling_bad.py"
    path.write_text("import torch\nfrom .mrc import X\n" + source)
    with pytest.raises(ImportError, match=re.escape(culprit)):
        check_remote_code_imports(path)


def test_add_remote_code_writes_auto_map_custom_pipelines_and_files(tmp_path):
    model, tokenizer = tiny_speeder()
    model.save_pretrained(tmp_path)
    copied = add_remote_code(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == REMOTE_CODE_AUTO_MAP
    assert config["custom_pipelines"] == REMOTE_CODE_PIPELINES
    assert config["custom_pipelines"]["sequential-recommendation"] == {
        "impl": "pipeline_speeder.SequentialRecPipeline",
        "pt": ["AutoModel"],
    }
    assert sorted(p.name for p in copied) == sorted(p.name for p in remote_code_files())
    assert all((tmp_path / p.name).is_file() for p in copied)


def test_shipped_code_is_the_packages_own_modules_and_closed_under_its_imports(tmp_path):
    model, tokenizer = tiny_speeder(num_items=30)
    save_pretrained_bundle(model, tmp_path, tokenizer, _catalog(30))
    sources = {p.name: p for p in remote_code_files()}
    shipped = sorted(tmp_path.glob("*.py"))
    assert {p.name for p in shipped} == set(sources)
    for path in shipped:
        # The module the package imports, its imports made flat: the export copies it, nobody edits a second copy.
        assert path.read_text() == flat_source(sources[path.name]), f"{path.name} drifted from the package"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (tmp_path / f"{node.module}.py").is_file(), f"{path.name} imports .{node.module}, not shipped"


def test_add_remote_code_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        add_remote_code(tmp_path)


# Runs in a child interpreter that cannot import speeder_hf: `-I` drops user site and PYTHON* variables, then the
# editable install's path entry and any speeder finder are removed before transformers is imported.
_ISOLATED = textwrap.dedent(
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
    """
)

_CHILD = _ISOLATED + textwrap.dedent(
    """
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


def _isolated_env(tmp_path) -> dict[str, str]:
    # The dynamic-module copy goes to the tmp dir.
    return {"HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONNOUSERSITE": "1"}


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
        **_isolated_env(tmp_path),
    )
    with torch.no_grad():
        expected = model(**inputs).logits
    out = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["causal_logits"], expected, atol=1e-5, rtol=1e-5)
    assert Path(tmp_path / "modules").is_dir()


# The sequential-recommendation pipeline from the model directory alone, through transformers: each directory's
# calls, printed as JSON. One thread, as in the parent, so that both sides add up in the same order.
_PIPELINE_CHILD = _ISOLATED + textwrap.dedent(
    """
    import json
    import torch
    from transformers import pipeline

    torch.set_num_threads(1)
    model_dirs, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = []
    for model_dir in model_dirs:
        recommend = pipeline("sequential-recommendation", model=model_dir, trust_remote_code=True)
        assert type(recommend).__module__.startswith("transformers_modules."), type(recommend).__module__
        out.append([recommend(inputs, **kwargs) for inputs, kwargs in calls])
    assert "speeder_hf" not in sys.modules
    print(json.dumps(out))
    """
)

PIPELINE_CALLS = [
    (["I1", "title 2", "I3"], {}),  # ids and a title; candidates retrieved
    ({"history": ["I4"], "candidates": ["I5", "title 8", "I10"]}, {}),  # given candidates, one by title
    (["I20", "title 21"], {"candidates": ["I22", "I23", "I24", "I25"], "top_k": 2}),
    ([["I11", "I12", "I13"], {"history": ["title 14"], "candidates": ["I1", "I2"]}, ["I15"]], {"batch_size": 2}),
]


def test_trust_remote_code_pipeline_without_the_package_recommends_exactly_as_the_package(tmp_path):
    # A model whose retrieved candidates are scored with their own fusion weights (the SASRec prior and the
    # retriever saved with it), and one without a SASRec, which retrieves by feature similarity.
    with_prior, tokenizer, sasrec = speeder_with_prior()
    with_prior.config.retrieved_fusion = {"llm": 0.5, "sasrec": 2.0, "fitted_on": 3}
    plain, _ = tiny_speeder(num_items=30)
    model_dirs = [tmp_path / "with-sasrec", tmp_path / "features-only"]
    save_pretrained_bundle(with_prior, model_dirs[0], tokenizer, tiny_catalog(), sasrec=sasrec)
    save_pretrained_bundle(plain, model_dirs[1], tokenizer, tiny_catalog())

    (tmp_path / "child.py").write_text(_PIPELINE_CHILD)
    result = run_fresh_python(
        ["-I", str(tmp_path / "child.py"), json.dumps([str(d) for d in model_dirs]), json.dumps(PIPELINE_CALLS)],
        cwd=tmp_path,
        **_isolated_env(tmp_path),
    )
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    for model_dir, remote_outputs in zip(model_dirs, remote):
        recommend = pipeline("sequential-recommendation", model=str(model_dir))  # the installed package's classes
        assert type(recommend).__module__ == "speeder_hf.serving.pipeline_speeder"
        expected = [recommend(inputs, **kwargs) for inputs, kwargs in PIPELINE_CALLS]
        assert remote_outputs == json.loads(json.dumps(expected))  # item by item, score by score
    assert [len(ranking) for ranking in remote[0][:3]] == [with_prior.config.num_candidates, 3, 2]


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
