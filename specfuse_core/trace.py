"""What a caller sees: per-segment events, the final result, usage and exits (docs/algorithm.md §6)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .tools import InvalidToolCall, ToolCall, ToolCallDelta

FinishReason = Literal["stop", "length", "tool_calls"]
CallKind = Literal["draft", "score", "advance", "finish"]


@dataclass(frozen=True)
class Candidate:
    """A proposed segment. ``ends`` means it also ends the response; ``drafters`` proposed it."""

    text: str
    ends: bool
    drafters: tuple[str, ...]


@dataclass(frozen=True)
class MemberCall:
    """One call a member made in a round: a draft, a scoring pass or a solo finish."""

    member: str
    kind: CallKind
    tokens: int
    seconds: float


@dataclass(frozen=True)
class MemberExit:
    """A member left the request. ``p`` and ``entropy`` are set for policy exits."""

    round: int
    member: str
    reason: str
    p: float | None = None
    entropy: float | None = None


@dataclass(frozen=True)
class Timings:
    """Seconds spent in a round: drafting, verifying, in all; ``grammar_s`` is the part of the round
    spent on the grammar (masks in every member's drafts, checks of the candidates)."""

    draft_s: float
    verify_s: float
    round_s: float
    grammar_s: float = 0.0


@dataclass(frozen=True)
class SegmentEvent:
    """One accepted segment, with everything that led to it.

    ``scores[j][i]`` is scorer ``scorers[j]``'s raw score of ``candidates[i]`` (``None``: not voted);
    ``totals[i]`` is the aggregated score. On a consensus round ``scorers`` is empty.
    ``finish_reason`` is set on the last event of a request, and that event also carries the finished
    ``result`` (every other event: ``None``), so a consumer of the stream needs no drain loop.

    With tools, ``content`` is the part of ``text`` outside tool calls (a partial ``<tool_call>`` tag is
    held back until it is resolved) and ``tool_calls`` the streamed call pieces. ``forced`` is text the
    grammar forced before this round's candidates, appended without drafting (it starts ``text``);
    ``notes`` says what the grammar check did to drafts.
    """

    round: int
    text: str
    winners: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    scorers: tuple[str, ...]
    scores: tuple[tuple[float | None, ...], ...]
    totals: tuple[float, ...]
    weights: dict[str, float]
    active: tuple[str, ...]
    exits: tuple[MemberExit, ...]
    calls: tuple[MemberCall, ...]
    timings: Timings
    consensus: bool = False
    solo: bool = False
    finish_reason: FinishReason | None = None
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    forced: str = ""
    notes: tuple[str, ...] = ()
    result: FusionResult | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """This segment's trace as JSON-ready data (without ``result``, which has its own ``to_dict``)."""
        data = dataclasses.asdict(dataclasses.replace(self, result=None))
        del data["result"]
        return data


@dataclass
class MemberUsage:
    """Token and call counts of one member over one request."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    scored_tokens: int = 0
    calls: int = 0

    def add(self, other: MemberUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.scored_tokens += other.scored_tokens
        self.calls += other.calls


@dataclass(frozen=True)
class Usage:
    """OpenAI-style usage of one request, as every front door reports it: prompt tokens in the first
    member's tokenizer (the one ``max_tokens`` counts in), completion tokens of the answer."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class FusionResult:
    """The answer of one request: text, finish reason, the trace of every round and usage per member.

    ``text`` is the whole accepted answer; ``content`` is its part outside tool calls (equal to ``text``
    when the request has no tools), ``tool_calls`` the parsed calls and ``invalid_tool_calls`` the calls
    that could not be parsed (for example cut by the token budget: then ``finish_reason="length"``).
    """

    text: str
    finish_reason: FinishReason
    trace: tuple[SegmentEvent, ...]
    usage: dict[str, MemberUsage]
    exits: tuple[MemberExit, ...] = ()
    output_tokens: int = 0
    members: tuple[str, ...] = field(default=())
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per-member remarks made while setting up, e.g. a remote member that can only draft."""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()

    @property
    def rounds(self) -> int:
        return len(self.trace)

    @property
    def token_usage(self) -> Usage:
        """Prompt and completion tokens of the request (``usage`` has the per-member detail)."""
        first = self.usage.get(self.members[0]) if self.members else None
        return Usage(prompt_tokens=first.prompt_tokens if first is not None else 0, completion_tokens=self.output_tokens)

    def summary(self) -> dict[str, Any]:
        """A compact, JSON-ready digest: rounds, wins per member, calls per round, exits."""
        wins = {name: 0 for name in self.members}
        for event in self.trace:
            for name in event.winners:
                wins[name] = wins.get(name, 0) + 1
        calls = sum(1 for e in self.trace for c in e.calls if c.kind in ("draft", "score"))
        return {
            "rounds": self.rounds,
            "wins": wins,
            "calls_per_round": round(calls / self.rounds, 3) if self.rounds else 0.0,
            "exited": [dataclasses.asdict(x) for x in self.exits],
            "finish_reason": self.finish_reason,
            **({"notes": {k: list(v) for k, v in self.notes.items()}} if self.notes else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "content": self.content,
            "tool_calls": [c.to_openai() for c in self.tool_calls],
            "invalid_tool_calls": [dataclasses.asdict(c) for c in self.invalid_tool_calls],
            "finish_reason": self.finish_reason,
            "trace": [e.to_dict() for e in self.trace],
            "usage": {k: dataclasses.asdict(v) for k, v in self.usage.items()},
            "exits": [dataclasses.asdict(x) for x in self.exits],
            "output_tokens": self.output_tokens,
            "notes": {k: list(v) for k, v in self.notes.items()},
            "summary": self.summary(),
        }

