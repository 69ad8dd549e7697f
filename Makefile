# Two commands for a fresh machine:  `make demo` (set up, run the default study)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export ITSTUDY_SUPERNI_DIR ?= $(SHARED)/superni
export ITSTUDY_T5_TOKENIZER ?= $(SHARED)/t5-tokenizer
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test test-fast ui clean

# torch first and exactly, so pip takes the local CPU build; constraints keep every other package from moving it.
$(BIN)/itstudy: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(BIN)/itstudy

demo: setup
	$(BIN)/itstudy run experiments/demo.yaml

test: setup
	$(BIN)/pytest -q

# The plain-Python tier: no Ray cluster, no browser (about 1.5 minutes on 2 cores). CI runs `make test`.
test-fast: setup
	$(BIN)/pytest -q -m "not ray and not browser"

ui: setup
	$(BIN)/itstudy ui experiments/demo.yaml

clean:
	rm -rf itstudy-runs .pytest_cache
