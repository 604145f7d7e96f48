# Every target sets itself up on a fresh machine: it creates .venv and installs the
# pinned CPU torch first (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
SEED ?= 0

.PHONY: install test test-slow lint format demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check irl_lens analyses apps tests
	$(BIN)/ruff format --check irl_lens analyses apps tests

format: $(STAMP)
	$(BIN)/ruff format irl_lens analyses apps tests
	$(BIN)/ruff check --fix irl_lens analyses apps tests

# The main job. Until `irl-lens reproduce` exists: expert data + quick-preset pretraining.
demo: $(STAMP)
	$(BIN)/irl-lens data gridworld --split pretrain --episodes 200000 --out $(DEMO_DIR)/data-pretrain --seed $(SEED)
	$(BIN)/irl-lens data gridworld --split clean --episodes 20000 --out $(DEMO_DIR)/data-clean --seed $(SEED)
	$(BIN)/irl-lens pretrain $(DEMO_DIR)/data-pretrain --out $(DEMO_DIR)/base --preset quick --seed $(SEED)
	$(BIN)/irl-lens evaluate $(DEMO_DIR)/base --seed $(SEED)

bench: $(STAMP)
	$(BIN)/irl-lens bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
