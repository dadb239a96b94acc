"""Reliability of `specfuse serve` on loopback: concurrency with greedy equality, client disconnects,
SIGTERM, memory over 200 requests, and a remote member whose server dies mid-stream."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from server_harness import (
    ServerProcess,
    chat_body,
    free_port,
    segment_chunks,
    sse_payloads,
    streamed_text,
)
from server_harness import server, tiny_specs  # noqa: F401 - fixtures

# A long greedy answer, one token per round (~1500 rounds): a request that is still running when needed.
LONG = {"max_tokens": 1500, "specfuse": {"segment_tokens": 1}}
PROMPTS = ["Where is Paris?", "Why is the sky blue?", "Count to ten.", "Say hello.", "Name a color.",
           "What is two plus two?", "Write one word.", "Describe the sea."]  # fmt: skip


def wait_for(predicate, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_eight_concurrent_streams_equal_the_same_requests_alone(server):
    srv = server
    options = {"max_tokens": 40, "specfuse": {"segment_tokens": 4}}
    with httpx.Client(timeout=120, headers=srv.headers) as client:
        alone = []
        for prompt in PROMPTS:
            payload = client.post(srv.url + "/v1/chat/completions", json=chat_body(prompt, **options)).json()
            alone.append((payload["choices"][0]["message"]["content"], payload["specfuse"]["rounds"]))

    busiest = 0
    stop_polling = threading.Event()

    def poll() -> None:
        nonlocal busiest
        while not stop_polling.is_set():
            busiest = max(busiest, int(srv.metrics().get("specfuse_requests_running", 0)))
            time.sleep(0.01)

    async def one(client: httpx.AsyncClient, prompt: str) -> list:
        body = {**chat_body(prompt, **options), "stream": True}
        async with client.stream("POST", srv.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            return list(sse_payloads([line async for line in response.aiter_lines()]))

    async def together() -> list:
        async with httpx.AsyncClient(timeout=120, headers=srv.headers) as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        streams = asyncio.run(together())
    finally:
        stop_polling.set()
        poller.join()
    for prompt, (text, rounds), payloads in zip(PROMPTS, alone, streams):
        assert payloads[-1] == "[DONE]", prompt
        assert streamed_text(payloads) == text, prompt
        assert len(segment_chunks(payloads)) == rounds, prompt
    assert busiest >= 4, f"the requests did not overlap (at most {busiest} running at once)"
    assert sum(rounds for _, rounds in alone) >= 2 * len(PROMPTS)


def test_a_client_that_disconnects_stops_its_request_and_frees_its_sessions(server):
    srv = server
    idle = srv.metrics()
    assert idle["specfuse_open_member_sessions"] == 0, "the server must count open member sessions"
    cancelled_before = idle.get('specfuse_requests_total{outcome="cancelled"}', 0)
    body = {**chat_body("Count slowly.", **LONG), "stream": True}
    with httpx.Client(timeout=60, headers=srv.headers) as client:
        with client.stream("POST", srv.url + "/v1/chat/completions", json=body) as response:
            payloads = sse_payloads(response.iter_lines())
            seen = [next(payloads) for _ in range(3)]
            assert [p["specfuse"]["round"] for p in seen] == [1, 2, 3]
            busy = srv.metrics()
            assert busy["specfuse_open_member_sessions"] == 2  # both members' sessions of this request
            assert busy["specfuse_requests_running"] == 1
            closed_at = time.monotonic()
        # leaving the block closes the connection mid-stream

    def cancelled() -> bool:
        return srv.metrics().get('specfuse_requests_total{outcome="cancelled"}', 0) == cancelled_before + 1

    assert wait_for(cancelled, 10), srv.log()
    took = time.monotonic() - closed_at
    after = srv.metrics()
    assert after["specfuse_open_member_sessions"] == 0 and after["specfuse_requests_running"] == 0
    time.sleep(0.5)
    assert srv.metrics()["specfuse_rounds_total"] == after["specfuse_rounds_total"], "rounds went on"
    round_s = after["specfuse_round_seconds_sum"] / after["specfuse_round_seconds_count"]
    assert took < 2.0 + 2 * round_s, f"stopping took {took:.2f} s (a round takes {round_s:.3f} s)"
    # and the server still answers
    answer = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(max_tokens=4), headers=srv.headers, timeout=60)
    assert answer.status_code == 200
    assert srv.metrics()["specfuse_open_member_sessions"] == 0


def test_sigterm_finishes_short_requests_cancels_long_ones_and_exits_0(tiny_specs, tmp_path):
    grace = 5
    srv = ServerProcess(tiny_specs, tmp_path / "serve.log", args=["--temperature", "0", "--shutdown-timeout", str(grace)],
                        threads=1)  # fmt: skip
    results: dict[str, list] = {}

    def stream(name: str, body: dict) -> None:
        payloads: list = []
        results[name] = payloads
        try:
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
                for payload in sse_payloads(r.iter_lines()):
                    payloads.append(payload)
        except httpx.HTTPError as error:
            payloads.append(error)

    long = threading.Thread(target=stream, args=("long", chat_body("Count slowly.", **LONG)))
    short = threading.Thread(target=stream, args=("short", chat_body("Say hello.", max_tokens=8)))
    try:
        long.start()
        assert wait_for(lambda: len(results.get("long", [])) >= 2, 60)
        short.start()
        assert wait_for(lambda: len(results.get("short", [])) >= 1, 60)
        os.kill(srv.pid, signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections once shutdown starts
            httpx.get(srv.url + "/health", timeout=5)
        code = srv.process.wait(30)
        took = time.monotonic() - sent
        long.join(10)
        short.join(10)
    finally:
        srv.stop()
    assert code == 0, srv.log()
    assert took < grace + 8, f"shutdown took {took:.1f} s with a {grace} s grace period"
    assert results["short"][-1] == "[DONE]", results["short"][-3:]  # finished within the grace period
    assert results["long"][-1] != "[DONE]" and len(segment_chunks(results["long"])) < 1400  # cut, not finished
    log = srv.log()
    assert "Waiting for" in log or "Shutting down" in log, log


@pytest.mark.slow
def test_rss_stays_flat_over_200_sequential_requests(server):
    srv = server
    with httpx.Client(timeout=60, headers=srv.headers) as client:
        def request(i: int) -> None:
            body = chat_body(PROMPTS[i % len(PROMPTS)] + f" #{i}", max_tokens=12, stream=i % 2 == 1)
            response = client.post(srv.url + "/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text

        for i in range(20):  # warm-up: allocator pools, caches of the first shapes
            request(i)
        warm = srv.rss_bytes()
        for i in range(20, 220):
            request(i)
        end = srv.rss_bytes()
    growth = (end - warm) / warm
    print(f"RSS after warm-up {warm / 2**20:.1f} MiB, after 200 more requests {end / 2**20:.1f} MiB "
          f"({100 * growth:+.2f}%)")  # fmt: skip
    assert growth < 0.05, f"RSS grew {100 * growth:.1f}% over 200 requests"
    assert srv.metrics()["specfuse_open_member_sessions"] == 0


class LlamaCppServer:
    """A llama-cpp-python server on 127.0.0.1 serving a GGUF; killed by its PID."""

    def __init__(self, gguf, log) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._log = open(log, "wb")
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        ready = wait_for(self._ready, 120, interval=0.3)
        if not ready:
            self.kill()
            raise RuntimeError(f"llama-cpp-python server not ready; see {log}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"llama-cpp-python server exited with {self.process.returncode}")
        try:
            return httpx.get(self.url + "/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_a_remote_member_killed_mid_stream_exits_and_the_stream_completes(tiny_specs, tmp_path):

    from specfuse_core.presets import PRESETS, fetch_gguf

    remote = LlamaCppServer(fetch_gguf(PRESETS["smollm2-135m-instruct"]), tmp_path / "llama.log")
    srv = None
    try:
        srv = ServerProcess([remote.url + "#smol", tiny_specs[0]], tmp_path / "serve.log",
                            args=["--temperature", "0", "--segment-tokens", "4", "--max-tokens", "28"])  # fmt: skip
        members = httpx.get(srv.url + "/v1/models").json()["data"][0]["members"]
        victim, survivor = members
        body = {**chat_body("Explain briefly why the sky is blue."), "stream": True}
        payloads: list = []
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=120) as response:
            for payload in sse_payloads(response.iter_lines()):
                payloads.append(payload)
                if len(payloads) == 1:
                    assert victim in payload["specfuse"]["active"]
                    remote.kill()  # the member's server dies between rounds
        assert payloads[-1] == "[DONE]"
        chunks = segment_chunks(payloads)
        exits = [x for c in chunks for x in c["specfuse"]["exits"]]
        assert [x["member"] for x in exits] == [victim], exits
        assert exits[0]["round"] >= 2 and exits[0]["reason"]
        assert chunks[-1]["specfuse"]["active"] == [survivor]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert [x["member"] for x in chunks[-1]["specfuse"]["summary"]["exited"]] == [victim]
        assert len(chunks) >= 2 and streamed_text(payloads)
        assert srv.metrics()[f'specfuse_member_exits_total{{member="{victim}"}}'] == 1
        assert not math.isnan(srv.metrics()["specfuse_open_member_sessions"])
    finally:
        remote.kill() if remote.process.poll() is None else None
        if srv is not None:
            assert srv.stop() == 0, srv.log()
