# Every target sets itself up on a fresh machine: it creates .venv and installs the
# pinned CPU torch first (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
SEED ?= 0

.PHONY: install test test-slow lint format demo bench gpu-smoke clean

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
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format irl_lens analyses apps tests
	$(BIN)/ruff check --fix irl_lens analyses apps tests

# The main job: the quick gridworld reproduction (resumable), then how to look at it.
demo: $(STAMP)
	$(BIN)/irl-lens reproduce gridworld --out $(DEMO_DIR) --preset quick --seed $(SEED)
	@echo "dashboard: IRL_LENS_RUNS=$(DEMO_DIR) $(BIN)/streamlit run apps/controllers.py"

bench: $(STAMP)
	$(BIN)/irl-lens bench

# Every stage on the GPU against the CPU in minutes, and a paper run's wall-clock there
# (without CUDA: the CPU half).
gpu-smoke: $(STAMP)
	$(BIN)/irl-lens gpu-smoke --out runs/gpu-smoke --device auto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
