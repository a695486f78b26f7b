# The two commands that set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= core

.PHONY: run test lint clean bench

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sunsetd --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m compileall -q sunsetd agents tests bench
	$(BIN)/sunsetd --profile core --check >/dev/null

bench: $(STAMP)
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/restart.py
	$(BIN)/python bench/router.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
