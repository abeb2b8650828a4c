PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DIFFUSERS_VENV := .venv-diffusers
TORCH ?= torch==2.13.0

.PHONY: setup setup-diffusers serve test test-fast test-diffusers lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required" or 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The diffusers back-ends' tier: torch (CPU build) apart from the core venv.
setup-diffusers: $(DIFFUSERS_VENV)/.installed

$(DIFFUSERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DIFFUSERS_VENV)
	$(DIFFUSERS_VENV)/bin/pip install --quiet --upgrade pip
	$(DIFFUSERS_VENV)/bin/pip install --quiet '$(TORCH)'
	$(DIFFUSERS_VENV)/bin/pip install --quiet -e '.[dev,diffusers]'
	touch $@

serve: setup
	$(BIN)/reelgen serve $(ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: setup lint test-diffusers
	$(BIN)/pytest -q -m "not diffusers"

test-diffusers: setup-diffusers
	$(DIFFUSERS_VENV)/bin/pytest -q -m diffusers tests/test_model_wan.py tests/test_model_ltx.py tests/test_model_cogvideox.py tests/test_diffusers_api.py

test-fast: setup   # pure and in-process tests only, about a minute and a half on 2 cores
	$(BIN)/pytest -q -m "not slow and not diffusers"

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(DIFFUSERS_VENV) .reelgen .pytest_cache
