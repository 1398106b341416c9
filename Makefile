# segdet: two commands.
#   make run    set up .venv, install, run the whole DVC pipeline (dvc repro) on the defaults
#   make test   set up .venv, Chromium (MLflow UI test) and PostgreSQL (concurrency test), install, run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch is pinned to the wheels this project is tested with; any version in pyproject's range works.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# Optional: a wheel index to install $(TORCH) from (empty: PyPI), e.g. the CPU-only build on a machine
# without a GPU: make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# pytest-xdist workers for make test: one a core, at most 4 (most tests start stage processes; the processes of each
# worker get its share of the cores, tests/conftest.py)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: help run test setup browser postgres lint clean-outputs
.DEFAULT_GOAL := help

help:
	@sed -n '2,4p' Makefile | sed 's/^# *//'

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) )$(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Chromium for the MLflow UI browser test (Debian package; sudo when not root)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# PostgreSQL server binaries (initdb, pg_ctl) for the concurrency test against a real database: the test starts
# its own server in a temporary folder (Debian package; sudo when not root)
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

test: setup browser postgres
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-outputs:
	rm -rf data models reports mlflow.db mlartifacts
