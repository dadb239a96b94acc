# Two commands do all the set-up (see README.md):
#   make ask Q="Why is the sky blue?"   # the default ensemble answers, streaming
#   make test                           # the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
Q ?= Why is the sky blue?
PYTEST_ARGS ?=

.PHONY: setup ask test

setup: $(VENV)/.installed

# llama-cpp-python (a dev extra) builds from source: a portable build, cached by pip afterwards.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

# torch==2.13.0 first: that exact CPU wheel is on our machines' disk (no multi-GB CUDA download).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq torch==2.13.0
	$(PIP) install -qq -e ".[dev]"
	touch $@

ask: setup
	$(BIN)/specfuse ask "$(Q)"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)
