# `make demo` and `make test` each bootstrap .venv from nothing (torch's CPU wheel first, then the
# package with its dev extras) and re-use it when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo grid (weak / boundary / strong x all 4 two-iteration static/on-policy paths + auto + blend,
# DPO, seed 0; shared prefixes trained once), its tables, and runs/demo/report.md with the plots.
# Resumable: an interrupted `make demo` continues where it stopped.
demo: $(STAMP)
	$(BIN)/stagealign demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark (bench/run_all.py: training vs plain TRL, sampling, judging, boundary cost, sample
# efficiency, scaling) at a size that fits 20 minutes on 2 CPU cores; JSON in bench/results/, then the
# README's Performance table.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
