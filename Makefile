# The course's entry points. Each one creates .venv and installs what it needs first; the
# install is skipped while a stamp file in .venv matches the hash of the requirements.
#
#   make course            every notebook in order at the quick scale (python -m rlhf_utils.course)
#   make course SCALE=full ONLY=01,03
#   make course SEED=1     the same course with other random draws (the spreads the notebooks quote)
#   make test              the whole test suite (installs Debian's chromium for the browser tests)
#   make lab               JupyterLab on notebooks/

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= $(or $(RLHF_SCALE),quick)
ONLY ?=
SEED ?=
PYTEST_ARGS ?=
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# the same CPU kernels on every x86 machine, so a seed gives the same figures anywhere (read when
# torch starts; the list is rlhf_utils/reproducibility.py's, printed without importing anything)
$(foreach v,$(shell $(PYTHON) rlhf_utils/reproducibility.py 2>/dev/null),$(eval export $(v)))

COURSE_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
TEST_HASH := $(shell cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -c1-16)
COURSE_STAMP := $(VENV)/.installed-course-$(COURSE_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(TEST_HASH)

.PHONY: course test lab chromium help

help:
	@sed -n '1,9p' Makefile | sed 's/^# \{0,1\}//'

course: $(COURSE_STAMP)
	$(BIN)/python -m rlhf_utils.course --scale $(SCALE) $(if $(ONLY),--only $(ONLY)) $(if $(SEED),--seed $(SEED))

test: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: $(COURSE_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "No python3 found: install Python 3.11 (or 3.10+)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "$(PYTHON) is older than 3.10: run with PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(COURSE_STAMP): | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install -e .
	rm -f $(VENV)/.installed-course-*
	touch $@

# requirements-test.txt includes requirements.txt, so this install covers the course's too
$(TEST_STAMP): | $(BIN)/python
	$(BIN)/pip install -r requirements-test.txt
	$(BIN)/pip install -e .
	rm -f $(VENV)/.installed-test-* $(VENV)/.installed-course-*
	touch $@ $(COURSE_STAMP)

# Debian's chromium for the browser tests (Playwright drives it; it never downloads its own)
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation; \
	else \
		echo "note: /usr/bin/chromium is missing, so the browser tests will be skipped;"; \
		echo "      install it with: sudo apt-get install chromium"; \
	fi
