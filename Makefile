# Two commands matter: `make test` and (once the pipeline exists) `make demo`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A CPU build of torch; a bare `torch` requirement would resolve to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/extraction_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
