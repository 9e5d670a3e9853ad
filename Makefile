# make run: install and start the demo; make test: install and run every test; make bench: benchmarks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/msjx-gateway serve --demo --port $(PORT)

test: lint
	bash scripts/run-tests.sh

# ruff, then the layer rules of pyproject.toml's [tool.importlinter] (no cycles; who may import whom).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# make bench QUICK=1: the same scenarios with short runs (about 3 minutes). Results: bench/results/latest.{json,md}.
bench: $(STAMP)
	bash bench/install-deps.sh
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
