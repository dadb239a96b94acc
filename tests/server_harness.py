"""`specfuse serve` as a real process on 127.0.0.1 for the server tests, plus small SSE helpers.

Every server a test starts is stopped by the test (SIGTERM, then SIGKILL), by its PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

SPECFUSE = [sys.executable, "-m", "specfuse_integrations.cli"]
TEST_KEY = "sk-test-d9b1c0ffee5eed"  # a fake key, passed through the environment (never on the command line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``specfuse serve`` in a subprocess; ``url`` is its base (``http://127.0.0.1:PORT``)."""

    def __init__(
        self,
        members: Sequence[str],
        log: Path,
        *,
        api_key: str | None = None,
        args: Sequence[str] = (),
        wait: bool = True,
        ready_timeout: float = 300.0,
        threads: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log
        self._log = open(log, "wb")
        command = [*SPECFUSE, "serve", "--port", str(self.port), "--log-level", "info"]
        for spec in members:
            command += ["--member", spec]
        command += list(args)
        env = {k: v for k, v in os.environ.items() if k != "SPECFUSE_SERVER_API_KEY"}
        env["TOKENIZERS_PARALLELISM"] = "false"
        if threads is not None:  # tiny models gain nothing from threads, and lose a lot on a busy machine
            env["OMP_NUM_THREADS"] = str(threads)
        if api_key:
            env["SPECFUSE_SERVER_API_KEY"] = api_key
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.process.pid
        if wait:
            self.wait_ready(ready_timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout: float) -> list[int]:
        """Poll ``/health`` until 200; returns the statuses seen (503 while loading)."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"specfuse serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                status = httpx.get(self.url + "/health", timeout=2).status_code
                seen.append(status)
                if status == 200:
                    return seen
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"specfuse serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def metrics(self) -> dict[str, float]:
        """The ``/metrics`` samples as ``{'name{labels}': value}``."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode


def chat_body(content: str = "Where is Paris?", **fields: Any) -> dict[str, Any]:
    return {"model": "specfuse", "messages": [{"role": "user", "content": content}], **fields}


def sse_payloads(lines: Iterable[str]) -> Iterator[dict[str, Any] | str]:
    """Decoded ``data:`` payloads of an SSE stream (``"[DONE]"`` stays a string)."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def stream_chat(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> list[Any]:
    """Every payload of one streaming chat completion, read to the end."""
    with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(sse_payloads(r.iter_lines()))


def segment_chunks(payloads: Sequence[Any]) -> list[dict[str, Any]]:
    return [p for p in payloads if isinstance(p, dict) and p.get("choices")]


def streamed_text(payloads: Sequence[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in segment_chunks(payloads))


def tiny_members(root: Path) -> list[str]:
    """Two tiny random models with different BPE tokenizers (built once per directory)."""
    from tiny_models import build_tiny_model

    specs = []
    for name, vocab, seed in (("tiny-a", 300, 1), ("tiny-b", 420, 2)):
        directory = root / name
        if not (directory / "config.json").exists():
            build_tiny_model(directory, vocab_size=vocab, seed=seed)
        specs.append(str(directory))
    return specs


TINY_FUSION = ["--temperature", "0", "--segment-tokens", "4", "--max-tokens", "24"]
_shared: dict[str, Any] = {}


def shared_tiny_specs(tmp_path_factory: Any) -> list[str]:
    """The two tiny models, built once per test session."""
    if "specs" not in _shared:
        _shared["specs"] = tiny_members(tmp_path_factory.mktemp("server-tiny"))
    return _shared["specs"]


def shared_tiny_server(request: Any, tmp_path_factory: Any) -> ServerProcess:
    """One `specfuse serve` of the tiny models (greedy, API key TEST_KEY) for every server test module
    of the session: each start costs the imports of torch and transformers. Stopped when the session
    ends (and each stop must be a clean exit 0)."""
    if "server" not in _shared:
        srv = ServerProcess(shared_tiny_specs(tmp_path_factory), tmp_path_factory.mktemp("server") / "serve.log",
                            api_key=TEST_KEY, args=TINY_FUSION, threads=1)  # fmt: skip
        _shared["server"] = srv

        def stop() -> None:
            code = _shared.pop("server").stop()
            assert code == 0, f"specfuse serve exited with {code}:\n{srv.log()}"

        request.session.config.add_cleanup(stop)
    return _shared["server"]


@pytest.fixture(scope="module")
def tiny_specs(tmp_path_factory: Any) -> list[str]:
    """Fixture (import it into a test module): the shared tiny model directories."""
    return shared_tiny_specs(tmp_path_factory)


@pytest.fixture(scope="module")
def server(request: Any, tmp_path_factory: Any) -> ServerProcess:
    """Fixture (import it into a test module): the shared tiny-model server."""
    return shared_tiny_server(request, tmp_path_factory)
