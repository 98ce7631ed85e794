# One set of commands for people and CI.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check aster_agents tests bench
	$(BIN)/ruff format --check aster_agents tests bench
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/aster-agent demo

bench: $(STAMP)
	$(BIN)/python bench/sign.py --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
