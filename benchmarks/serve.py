"""`specfuse serve` under load: 1, 4 and 16 concurrent streaming clients on 127.0.0.1.

Run from the repo root:  .venv/bin/python -m benchmarks.serve --json

It starts ``specfuse serve`` (the default ensemble unless ``--member`` is given) on a free loopback
port, then for each concurrency level runs that many clients, each sending ``--requests-per-client``
streaming requests one after the other (greedy, ``--max-tokens`` per answer). Reported per level:
p50/p95 time to first segment (request sent -> first SSE chunk), p50/p95 total latency, errors
(must be 0), throughput (answer tokens and requests per second of wall time) and the server's peak
RSS during the level. The same requests are also answered in-process (``Ensemble.astream``, one at a
time) to give the HTTP overhead on time to first segment and on latency (goal: within +10%). One
request warms each side up first and is not counted.

Concurrent requests on one member run their forward passes in lockstep on its worker, decode steps
batched. ``--fairness`` measures instead what one long prompt does to short requests: the time to
first segment of three short streaming requests sent together, alone and 2 s after a request whose
prompt is about ``--long-tokens`` tokens, through the server; then the same in-process
with the prompt prefill in chunks (the default, ``PREFILL_CHUNK``) and in one pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Name three primary colors.",
    "Explain briefly why the sky is blue.",
    "Give one tip for writing clear code.",
    "What is 12 times 12?",
    "Describe a cat in one sentence.",
    "Why do leaves change color in autumn?",
    "Write a short greeting for a new colleague.",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = (len(ordered) - 1) * q
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


class RssSampler:
    """Peak RSS of the server process, sampled every 50 ms while a level runs."""

    def __init__(self, server: Any) -> None:
        self.server, self.peak = server, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def request_body(prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"model": "specfuse", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": args.max_tokens, "temperature": 0,
            "specfuse": {"segment_tokens": args.segment_tokens}}  # fmt: skip


async def one_request(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    return {"error": payload["error"]["message"]}
                if payload.get("choices") and first is None:
                    first = time.perf_counter() - start
                if payload.get("usage"):
                    tokens = payload["usage"]["completion_tokens"]
    except Exception as error:  # counted, not raised: the benchmark reports errors
        return {"error": f"{type(error).__name__}: {error}"}
    return {"ttfs": first, "latency": time.perf_counter() - start, "tokens": tokens}


async def run_level(url: str, clients: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    import httpx

    async def client_loop(index: int, client: Any) -> list[dict[str, Any]]:
        out = []
        for r in range(args.requests_per_client):
            prompt = PROMPTS[(index * args.requests_per_client + r) % len(PROMPTS)]
            out.append(await one_request(client, url, request_body(prompt, args)))
        return out

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    return [r for rs in results for r in rs], wall


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    ttfs = [r["ttfs"] for r in ok if r["ttfs"] is not None]
    latency = [r["latency"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": [r["error"] for r in results if "error" in r][:3],
        "ttfs_p50_s": round(percentile(ttfs, 0.5), 3),
        "ttfs_p95_s": round(percentile(ttfs, 0.95), 3),
        "latency_p50_s": round(percentile(latency, 0.5), 3),
        "latency_p95_s": round(percentile(latency, 0.95), 3),
        "wall_s": round(wall, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 3) if wall else 0.0,
        "requests_per_min": round(60 * len(ok) / wall, 3) if wall else 0.0,
    }


def in_process(members: list[str] | None, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The same streaming requests through ``Ensemble.astream`` in this process, one at a time."""
    from specfuse_core import Ensemble, FusionConfig

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ensemble = Ensemble.from_specs(members or None, FusionConfig())

    async def run() -> list[dict[str, Any]]:
        out = []
        await ensemble.agenerate([{"role": "user", "content": PROMPTS[-1]}], max_tokens=args.max_tokens,
                                 temperature=0, segment_tokens=args.segment_tokens)  # warm-up, not counted
        for prompt in prompts:
            start = time.perf_counter()
            first = None
            stream = ensemble.astream([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                      temperature=0, segment_tokens=args.segment_tokens)  # fmt: skip
            async for _ in stream:
                if first is None:
                    first = time.perf_counter() - start
            out.append({"ttfs": first, "latency": time.perf_counter() - start, "tokens": stream.result.output_tokens})
        return out

    results = asyncio.run(run())
    return summarize(results, sum(r["latency"] for r in results)) | {"per_request": results}


LONG_WORDS = "one two three four five six seven eight nine ten "


def long_prompt(tokens: int, members: list[str] | None) -> str:
    """A prompt of about ``tokens`` tokens in the first member's tokenizer."""
    from specfuse_core import Ensemble

    first = Ensemble.from_specs(members or None, share=True).members[0]
    per_repeat = len(first.encode(LONG_WORDS * 10)) / 10
    return LONG_WORDS * max(1, round(tokens / per_repeat))


async def short_ttfs(send: Any, with_long: bool) -> dict[str, Any]:
    """Three short requests, each one's time to first segment; with the long one sent 2 s before them
    (so that its prompt is being read when they arrive)."""

    async def later(text: str) -> dict[str, Any]:
        await asyncio.sleep(2.0 if with_long else 0.0)
        return await send(text, False)

    jobs = [later(PROMPTS[i]) for i in range(3)] + ([send(None, True)] if with_long else [])
    results = await asyncio.gather(*jobs)
    short = [r for r in results[:3]]
    errors = [r["error"] for r in results if "error" in r]
    return {"ttfs_s": [round(r.get("ttfs") or float("nan"), 3) for r in short],
            "long_ttfs_s": round(results[3].get("ttfs") or float("nan"), 3) if with_long else None,
            "errors": errors}  # fmt: skip


def fairness(members: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time to first segment of short requests, without and with one long prompt beside them."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from server_harness import ServerProcess

    prompt = long_prompt(args.long_tokens, members or None)
    out_dir = Path("benchmarks/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"members": members or "default", "long_prompt_words": len(prompt.split()),
                              "long_tokens": args.long_tokens, "max_tokens": args.max_tokens}  # fmt: skip

    def body(text: str) -> dict[str, Any]:
        return request_body(text, args)

    server = ServerProcess(members, out_dir / "serve-fairness.log", args=["--log-level", "warning"], ready_timeout=900)
    try:
        async def over_http(with_long: bool) -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=httpx.Timeout(3600)) as client:
                async def send(text: str | None, is_long: bool) -> dict[str, Any]:
                    return await one_request(client, server.url, body(prompt if is_long else text or ""))

                return await short_ttfs(send, with_long)

        asyncio.run(over_http(False))  # warm-up
        report["server"] = {"alone": asyncio.run(over_http(False)), "with_long": asyncio.run(over_http(True))}
        print(f"server: {json.dumps(report['server'])}", flush=True)
    finally:
        server.stop(60)

    from specfuse_core import Ensemble, FusionConfig, hf_member

    ensemble = Ensemble.from_specs(members or None, FusionConfig(), share=True)
    chunk = hf_member.PREFILL_CHUNK

    async def in_process(with_long: bool) -> dict[str, Any]:
        async def send(text: str | None, is_long: bool) -> dict[str, Any]:
            start = time.perf_counter()
            messages = [{"role": "user", "content": prompt if is_long else text or ""}]
            async with ensemble.astream(messages, max_tokens=args.max_tokens, temperature=0,
                                        segment_tokens=args.segment_tokens) as stream:  # fmt: skip
                async for _ in stream:
                    return {"ttfs": time.perf_counter() - start}
            return {"error": "no segment"}

        return await short_ttfs(send, with_long)

    asyncio.run(in_process(False))  # warm-up
    report["in_process"] = {"alone": asyncio.run(in_process(False)), "chunked": asyncio.run(in_process(True))}
    hf_member.PREFILL_CHUNK = 10**9  # one pass for the whole prompt, as before chunked prefill
    try:
        report["in_process"]["one_pass"] = asyncio.run(in_process(True))
    finally:
        hf_member.PREFILL_CHUNK = chunk
    print(f"in-process: {json.dumps(report['in_process'])}", flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    alone = median(report["server"]["alone"]["ttfs_s"])
    report["short_ttfs_ratio"] = {
        "server_with_long_vs_alone": round(median(report["server"]["with_long"]["ttfs_s"]) / alone, 2),
        "in_process_chunked_vs_alone": round(
            median(report["in_process"]["chunked"]["ttfs_s"]) / median(report["in_process"]["alone"]["ttfs_s"]), 2),
        "in_process_one_pass_vs_alone": round(
            median(report["in_process"]["one_pass"]["ttfs_s"]) / median(report["in_process"]["alone"]["ttfs_s"]), 2),
    }  # fmt: skip
    print(f"short requests' median time to first segment, relative to alone: {report['short_ttfs_ratio']}")
    (out_dir / "serve-fairness.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", action="append", help="member spec (default: the default ensemble)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--segment-tokens", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--fairness", action="store_true", help="short requests beside one long prompt (see above)")
    parser.add_argument("--long-tokens", type=int, default=4000, help="--fairness: the long prompt's length")
    args = parser.parse_args(argv)
    if args.fairness:
        report = fairness(args.member or [], args)
        if args.json:
            print(json.dumps(report))
        return 0 if not any(report["server"][k]["errors"] for k in ("alone", "with_long")) else 1

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from server_harness import ServerProcess  # the tests' launcher: `specfuse serve` on a free loopback port

    members = args.member or []
    out_dir = Path("benchmarks/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    limits = ["--max-concurrent", str(max(args.clients)), "--max-queue", str(max(args.clients)), "--log-level", "warning"]
    server = ServerProcess(members, out_dir / "serve-server.log", args=limits, ready_timeout=900)
    load_s = time.perf_counter() - started
    url = server.url
    levels: dict[str, Any] = {}
    try:
        asyncio.run(run_level(url, 1, argparse.Namespace(**{**vars(args), "requests_per_client": 1})))  # warm-up
        idle_rss = server.rss_bytes()
        for clients in args.clients:
            with RssSampler(server) as sampler:
                results, wall = asyncio.run(run_level(url, clients, args))
            levels[str(clients)] = summarize(results, wall) | {"peak_rss_mib": round(sampler.peak / 2**20, 1)}
            print(f"{clients:>3} clients: {json.dumps(levels[str(clients)])}", flush=True)
    finally:
        server.stop(60)
    # The single-client HTTP requests again, in-process (after the server is gone: one process on the CPU).
    prompts = [PROMPTS[r % len(PROMPTS)] for r in range(args.requests_per_client)]
    local = in_process(members, prompts, args)
    one = levels[str(args.clients[0])]
    report = {
        "members": members or "default",
        "settings": {"requests_per_client": args.requests_per_client, "max_tokens": args.max_tokens,
                     "segment_tokens": args.segment_tokens, "temperature": 0},  # fmt: skip
        "server_ready_s": round(load_s, 1),
        "idle_rss_mib": round(idle_rss / 2**20, 1),
        "levels": levels,
        "in_process": {k: v for k, v in local.items() if k != "per_request"},
        "http_overhead": {
            "ttfs_p50": round(one["ttfs_p50_s"] / local["ttfs_p50_s"] - 1, 4),
            "latency_p50": round(one["latency_p50_s"] / local["latency_p50_s"] - 1, 4),
        },
        "throughput_vs_1_client": {k: round(v["tokens_per_s"] / one["tokens_per_s"], 3) for k, v in levels.items()},
    }
    print(f"in-process: {json.dumps(report['in_process'])}")
    print(f"HTTP overhead at {args.clients[0]} client(s): time to first segment {100 * report['http_overhead']['ttfs_p50']:+.1f}%, "
          f"latency {100 * report['http_overhead']['latency_p50']:+.1f}% (p50)")  # fmt: skip
    print(f"throughput relative to {args.clients[0]} client(s): {report['throughput_vs_1_client']}")
    (out_dir / "serve.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    return 0 if all(v["errors"] == 0 for v in levels.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
