# The two quick-start commands: `make run` and `make test`. Each installs
# what it needs into .venv first (once; again when the dependencies change).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: these wheels are served from local disk
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job: the whole DAG on the embedded default (config.yaml).
run: $(STAMP)
	$(BIN)/snakemake --cores all

# Lint, formatting and the test suite (what CI runs).
test: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/snakefmt .

clean:
	rm -rf results logs .snakemake
