PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup serve test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required" or 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: setup
	$(BIN)/reelgen serve $(ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q

test-fast: setup   # pure and in-process tests only, about a minute and a half on 2 cores
	$(BIN)/pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .reelgen .pytest_cache
