# The front door (README: make demo, then make test). Every target installs what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
CDCF := $(VENV)/bin/cdcf
STAMP := $(VENV)/.installed

.PHONY: install up down status lint test demo bench

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system.sh
	bash scripts/install-system.sh
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,inference,bench]'
	touch $@

up: install
	$(CDCF) up

down:
	@if [ -x $(CDCF) ]; then $(CDCF) down; else echo "nothing installed, nothing to stop"; fi

status: install
	$(CDCF) status

# style (ruff) and the layers (import-linter: pyproject.toml's [tool.importlinter], README "Layout")
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

demo: install
	$(CDCF) demo

# The open benchmark (docs/semantics.md#benchmark-keys; about 45 minutes on 2 cores): bench/results/latest.json, its plots and
# BENCHMARKS.md. GPU inference figures come from scripts/gpu-bench.sh on a GPU host (bench/results/inference_gpu.json).
bench: up
	$(VENV)/bin/python -m bench.run
