# Everything sets itself up: a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck pytest browser bench clean

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

pytest: $(STAMP) browser
	$(BIN)/pytest -q

# The developers' loop: lint, types and every test but the real-process ones (about 20 s).
test-fast: lint typecheck
	$(BIN)/pytest -q -m "not slow"

# The gallery's browser test needs Chromium (Debian's package). Installed when missing and
# possible (root with apt-get); otherwise that one test is skipped, loudly.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing chromium for the browser test (apt-get)..." && \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "WARNING: chromium is not installed and could not be: the browser test will be SKIPPED"

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
