# uanet: `make up` runs the whole stack; `make test` runs every test against real services.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-slow lint bench-fanout clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/uanet up  # migrates, then runs everything

# Two workers, a file each at a time: most of a test's time is waiting on the services.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# The tests marked slow (minutes each): run before a release and after touching what they guard.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared rendering services devtools uanet_cli

# Not part of `make test`: a benchmark that prints figures (see README, Performance).
bench-fanout: $(STAMP)
	$(BIN)/python bench/fanout.py

clean:
	rm -rf $(VENV) var test-artifacts
