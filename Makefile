# Everything sets itself up: a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo-out
	$(BIN)/batchgen demo --out demo-out

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check batchgen tests bench
	$(BIN)/ruff format --check batchgen tests bench

typecheck: $(STAMP)
	$(BIN)/mypy batchgen

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
