"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specfuse_core import FusionResult, SegmentEvent

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, open_sessions: Callable[[], float] | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.http = Counter("specfuse_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.requests = Counter("specfuse_requests", "Chat completions by outcome (stop, length, tool_calls, "
                                "cancelled, error)", ["outcome"], registry=r)  # fmt: skip
        self.running = Gauge("specfuse_requests_running", "Chat completions being answered now", registry=r)
        self.queued = Gauge("specfuse_requests_queued", "Chat completions waiting for a slot", registry=r)
        self.rejected = Counter("specfuse_requests_rejected", "Requests refused with 429 (over capacity)", registry=r)
        self.rounds = Counter("specfuse_rounds", "Accepted segments (rounds)", registry=r)
        self.prompt_tokens = Counter("specfuse_prompt_tokens", "Prompt tokens (first member's tokenizer)", registry=r)
        self.output_tokens = Counter("specfuse_output_tokens", "Answer tokens (first member's tokenizer)", registry=r)
        self.member_calls = Counter("specfuse_member_calls", "Member calls by kind", ["member", "kind"], registry=r)
        self.member_tokens = Counter("specfuse_member_drafted_tokens", "Tokens drafted per member", ["member"],
                                     registry=r)  # fmt: skip
        self.wins = Counter("specfuse_member_wins", "Rounds won per member", ["member"], registry=r)
        self.exits = Counter("specfuse_member_exits", "Members that left a request", ["member"], registry=r)
        self.latency = Histogram("specfuse_request_seconds", "Chat completion latency, arrival to last segment",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.first_segment = Histogram("specfuse_first_segment_seconds", "Arrival to first accepted segment",
                                       buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_wait = Histogram("specfuse_queue_wait_seconds", "Time waiting for a slot",
                                    buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.round_seconds = Histogram("specfuse_round_seconds", "One round: draft + verify",
                                       buckets=ROUND_BUCKETS, registry=r)  # fmt: skip
        self.loaded = Gauge("specfuse_ready", "1 once the members are loaded", registry=r)
        if open_sessions is not None:
            gauge = Gauge("specfuse_open_member_sessions", "Member sessions (KV caches) open across requests",
                          registry=r)  # fmt: skip
            gauge.set_function(open_sessions)

    def segment(self, event: SegmentEvent) -> None:
        self.rounds.inc()
        self.round_seconds.observe(event.timings.round_s)
        for call in event.calls:
            self.member_calls.labels(call.member, call.kind).inc()
            if call.kind == "draft":
                self.member_tokens.labels(call.member).inc(call.tokens)
        for name in event.winners:
            self.wins.labels(name).inc()
        for record in event.exits:
            self.exits.labels(record.member).inc()

    def finished(self, result: FusionResult, prompt_tokens: int, seconds: float) -> None:
        self.requests.labels(result.finish_reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.output_tokens.inc(result.output_tokens)
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
