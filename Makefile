# dp-medbench: the two set-up commands of the README, plus lint and benchmarks.
#   make demo   install into .venv, run the workflow on the built-in demo, write results/report.html
#   make test   install into .venv and run lint + the whole test suite (what CI runs)
#   make check  what a run of CONFIG (default config.yaml) still needs, checked in seconds before any job
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= all

CONFIG ?= config.yaml

.PHONY: install demo test lint bench clean check

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --configfile config/demo.yaml --report results/report.html

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules/
	$(BIN)/snakemake --lint --configfile config/demo.yaml

# Pre-flight: what a run of $(CONFIG) still needs (credentials, archives, weights, disk, GPU), in seconds.
check: install
	PYTHONPATH=workflow/scripts $(BIN)/python -m dpmedbench.preflight --configfile $(CONFIG)

test: lint
	$(BIN)/python -m pytest

bench: install
	PYTHONPATH=workflow/scripts $(BIN)/python -m dpmedbench.bench resize
	PYTHONPATH=workflow/scripts $(BIN)/python -m dpmedbench.bench ldp --images 2636 --channels 3
	PYTHONPATH=workflow/scripts $(BIN)/python -m dpmedbench.bench ldp --images 4700 --channels 1
	PYTHONPATH=workflow/scripts $(BIN)/python -m dpmedbench.bench dpsgd --size 224 --batch 32

clean:
	rm -rf .snakemake data/prepared data/raw logs results
