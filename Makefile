# `make test` is the command the README gives and .ci/run calls.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= auto

.PHONY: all venv fmt lint typecheck unit test demo tour bench clean

all: test

# __init__.py holds the version: the installed metadata must follow it.
$(STAMP): pyproject.toml src/knightwatch/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

fmt: venv
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: venv
	$(BIN)/mypy --strict src/knightwatch

unit: venv
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck unit

# The Knightmare drill at demo speed on a real local fleet; Ctrl-C stops everything it started.
demo: venv
	$(BIN)/knightwatch demo

# The release tour: build, verify, deploy, drift and reconcile on a 3-node fleet, step by step.
tour: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

bench: venv
	$(BIN)/python bench/bundle.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/drift.py

clean:
	rm -rf $(VENV) .demo .bench .mypy_cache .ruff_cache .pytest_cache
