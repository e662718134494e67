# The few commands everyone runs. Each sets up .venv first when pyproject.toml is newer.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint format bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

serve: $(BIN)/.installed  ## run the service on ./receiver.db, port 8000
	$(BIN)/receiver serve

test: $(BIN)/.installed  ## lint, types, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed  ## the benchmarks (about an hour; ingest and operations need wrk)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/pages.py
	$(BIN)/python bench/operations.py
