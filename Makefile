# The front door (SPEC section 1). Every target installs what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
CDCF := $(VENV)/bin/cdcf
STAMP := $(VENV)/.installed

.PHONY: install up down status test demo bench

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

test: install
	$(VENV)/bin/pytest

demo: install
	$(CDCF) demo

# The full benchmark of SPEC section 6 (one latest.json, BENCHMARKS.md) is not built yet; this runs the capture,
# streaming, batch and inference benchmarks that exist, each writing bench/results/<name>.json.
bench: up
	$(VENV)/bin/python bench/cdc_capture.py
	$(VENV)/bin/python bench/streaming.py
	$(VENV)/bin/python -m bench.offline
	$(VENV)/bin/python -m bench.inference --redis-server /usr/bin/redis-server --out bench/results/inference_cpu.json
