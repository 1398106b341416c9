# segdet: two commands.
#   make run    set up .venv, install, run the whole DVC pipeline (dvc repro) on the defaults
#   make test   set up .venv and Chromium (for the MLflow UI test), install, run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch is pinned to the wheels this project is tested with; any version in pyproject's range works.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help run test setup browser lint clean-outputs
.DEFAULT_GOAL := help

help:
	@sed -n '2,4p' Makefile | sed 's/^# *//'

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Chromium for the MLflow UI browser test (Debian package; sudo when not root)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-outputs:
	rm -rf data models reports mlflow.db mlartifacts
