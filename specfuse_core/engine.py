"""`Ensemble`: the SpecFuse round loop (docs/algorithm.md §3) with sync and async twins.

One round: every active drafter drafts a segment (concurrently), identical drafts merge into
candidates, every active scorer scores every candidate in one batched pass, scores are normalised
per scorer and aggregated, and the winner is broadcast to every member. Model exit (§4) and online
weights (§5) run after each verified round when switched on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import policies, scoring
from ._background import run_sync
from .config import FusionConfig
from .errors import ConfigError, NoActiveMembersError
from .limits import PromptFit, check_prompts, check_tool_limits
from .member import ContextWindowFull, Draft, Member, MemberSession, SamplingParams
from .messages import Message, validate_messages
from .scheduler import Placement, Schedule, assign
from .segments import find_stop, trim_to_word_boundary
from .tools import (
    CALL_OPEN,
    NO_TOOLS,
    TOOL_OPTIONS,
    ToolCall,
    ToolCallDelta,
    ToolCallStreamParser,
    ToolRequest,
    add_missing_call_tag,
    decides_tool_use,
    inside_call,
    parse_tool_calls,
    past_open_call,
    tool_action,
    tool_request,
)
from .trace import (
    Candidate,
    FinishReason,
    FusionResult,
    MemberCall,
    MemberExit,
    MemberUsage,
    SegmentEvent,
    Timings,
)

REPEATED_CALL_NOTE = "the answer repeated the call"
"""How a round's note starts when the answer repeated a finished call (name and arguments) and the repeat was dropped."""

T = TypeVar("T")

DEFAULT_MEMBERS: tuple[str, ...] = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
"""Specs of the default ensemble: SmolLM2-135M-Instruct + Qwen2.5-Coder-0.5B-Instruct."""


class Ensemble:
    """Several members answering one request together with SpecFuse.

    >>> ens = Ensemble.from_specs(["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    >>> ens.generate([{"role": "user", "content": "What is the capital of France?"}]).text

    ``schedule`` says how local members share the machine: ``"parallel"`` (each member on its own
    worker thread with a share of the cores, drafting and scoring side by side), ``"turns"`` (members
    on one device take turns, each using all its cores) or ``"auto"`` (parallel when several members
    share the CPU and there is a core for each). ``placements`` says where each member runs. Concurrent
    requests on one ensemble share batched forward passes in either schedule
    (:mod:`specfuse_core.scheduler`).

    State kept across requests: ``weights`` and ``margin_scales`` (with ``keep_weights``) and
    ``exit_evidence`` (with ``keep_exits``; :meth:`readmit` clears it).
    """

    def __init__(
        self, members: Sequence[Member], config: FusionConfig | None = None, *, schedule: Schedule = "auto"
    ) -> None:
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        seen: set[str] = set()
        for member in members:
            if member.name in seen:
                raise ConfigError(f"duplicate member name {member.name!r}: give each member a unique name=")
            seen.add(member.name)
        if not any(m.can_draft for m in members):
            raise ConfigError("no drafter: at least one member must have role 'both' or 'draft'")
        if not any(m.can_score for m in members):
            raise ConfigError("no scorer: at least one member must have role 'both' or 'score'")
        self.members: tuple[Member, ...] = tuple(members)
        self.config = config or FusionConfig()
        self.weights: dict[str, float] = _uniform_weights(self.members)
        self.margin_scales: dict[str, scoring.MarginScale] = {}  # normalize="calibrated", with keep_weights
        self.exit_evidence = policies.ExitEvidence()  # exit with keep_exits
        self._evidence_lock = threading.Lock()
        self._open_sessions = 0
        local = [m for m in self.members if hasattr(m, "use_worker")]
        self.schedule: Schedule = schedule
        self.placements: tuple[Placement, ...] = tuple(assign(local, schedule)) if local else ()  # type: ignore[arg-type]

    def readmit(self) -> None:
        """Forget model exit's evidence kept across requests (``keep_exits``): every member takes part
        in the next request again and ``Q`` starts from zero."""
        with self._evidence_lock:
            self.exit_evidence = policies.ExitEvidence()

    def _add_exit_evidence(self, quality: Mapping[str, float], rounds: int) -> None:
        with self._evidence_lock:
            self.exit_evidence = self.exit_evidence.add(quality, rounds)

    def _keep_out(self, name: str, reason: str) -> None:
        """Keep ``name`` out of later requests, unless that would leave no member to draft."""
        with self._evidence_lock:
            kept_out = {*self.exit_evidence.exited, name}
            if any(m.can_draft and m.name not in kept_out for m in self.members):
                self.exit_evidence = self.exit_evidence.with_exit(name, reason)

    @property
    def open_sessions(self) -> int:
        """Member sessions currently open across all requests (each holds a KV cache or a connection)."""
        return self._open_sessions

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[str] | None = None,
        config: FusionConfig | None = None,
        *,
        share: bool = True,
        schedule: Schedule = "auto",
        **member_options: Any,
    ) -> Ensemble:
        """Build an ensemble from member specs (preset names, directories, Hub ids, ``.gguf`` files).

        ``None`` means :data:`DEFAULT_MEMBERS`. A spec may end with ``::draft`` or ``::score`` to
        give that member a single role. ``member_options`` (``device``, ``dtype``, ...) go to every
        member. With ``share=True`` members already loaded with the same spec and options are reused.
        ``schedule`` is how local members share the machine (see :class:`Ensemble`).
        """
        from .registry import load_member

        specs = list(DEFAULT_MEMBERS if specs is None else specs)
        if not specs:
            raise ConfigError("no member specs given")
        return cls([load_member(spec, share=share, **member_options) for spec in specs], config, schedule=schedule)

    @property
    def name(self) -> str:
        """A readable name: ``specfuse(member+member)``."""
        return "specfuse(" + "+".join(m.name for m in self.members) + ")"

    @property
    def context_window(self) -> int | None:
        """The smallest context window among the members."""
        windows = [m.context_window for m in self.members if m.context_window]
        return min(windows) if windows else None

    def __repr__(self) -> str:
        return f"Ensemble(members={[m.name for m in self.members]!r}, config={self.config!r})"

    def _request(self, messages: Sequence[Mapping[str, Any]], overrides: dict[str, Any]) -> _Request:
        tools = tool_request(**{k: overrides.pop(k) for k in TOOL_OPTIONS if k in overrides})
        clean = validate_messages(messages)
        config = self.config.replace(**overrides) if overrides else self.config
        check_tool_limits(tools, config)
        return _Request(self, clean, config, tools)

    def stream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> FusionStream:
        """Iterate over accepted segments as they are accepted; the last event (``finish_reason`` set)
        carries the final ``result``, which ``.result`` holds too from then on.

        ``options`` are :class:`FusionConfig` fields for this call only, plus the tool options of
        :meth:`generate`.
        """
        return FusionStream(self._request(messages, options))

    def astream(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> AsyncFusionStream:
        """Async twin of :meth:`stream`."""
        return AsyncFusionStream(self._request(messages, options))

    def generate(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> FusionResult:
        """Answer a chat request.

        ``options`` are :class:`FusionConfig` fields for this call only, and:

        - ``tools``: OpenAI function tools (``{"type": "function", "function": {"name", "description",
          "parameters"}}``); ``tool_choice``: ``"auto"`` (default with tools), ``"required"``, ``"none"``
          or a tool's name; ``parallel_tool_calls``: whether several calls may follow each other;
        - ``response_format``: ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` or
          ``{"type": "json_object"}``.

        Every local member then drafts under a token mask compiled from one grammar, and every
        candidate is checked against it (needs the ``tools`` extra). Parsed calls are in
        ``result.tool_calls`` with ``finish_reason="tool_calls"``.
        """
        stream = self.stream(messages, **options)
        for _ in stream:
            pass
        return stream.result

    async def agenerate(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> FusionResult:
        """Async twin of :meth:`generate`."""
        stream = self.astream(messages, **options)
        async for _ in stream:
            pass
        return stream.result



class _StreamBase:
    def __init__(self, request: _Request) -> None:
        self._request = request
        self._events = request.events()

    @property
    def result(self) -> FusionResult:
        """The final result; available once the last event (the one with ``finish_reason``) was yielded."""
        if self._request.result is None:
            raise RuntimeError("the stream has not finished yet")
        return self._request.result


class FusionStream(_StreamBase, Iterator[SegmentEvent]):
    """Synchronous iterator of :class:`SegmentEvent`; works inside a running event loop too."""

    def __iter__(self) -> FusionStream:
        return self

    def __next__(self) -> SegmentEvent:
        try:
            return run_sync(self._events.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def check(self) -> None:
        """Run the request's up-front checks now (limits, context windows, the grammar), before any
        member works on it; iterating runs them too. Raises :class:`InvalidRequestError` subclasses:
        :class:`RequestLimitError`, :class:`ContextLengthError`."""
        run_sync(self._request.preflight())

    def close(self) -> None:
        """Stop the request early and release its caches."""
        run_sync(self._events.aclose())

    def __enter__(self) -> FusionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFusionStream(_StreamBase):
    """Asynchronous iterator of :class:`SegmentEvent`."""

    def __aiter__(self) -> AsyncFusionStream:
        return self

    async def __anext__(self) -> SegmentEvent:
        return await self._events.__anext__()

    async def check(self) -> None:
        """Async twin of :meth:`FusionStream.check`."""
        await self._request.preflight()

    async def aclose(self) -> None:
        """Stop the request early and release its caches."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncFusionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _uniform_weights(members: Sequence[Member]) -> dict[str, float]:
    scorers = [m.name for m in members if m.can_score]
    return {name: 1.0 / len(scorers) for name in scorers}


@dataclass
class _Proposal:
    """A candidate under construction: merged identical drafts, in member order."""

    text: str
    ends: bool
    drafters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _CallDecision:
    """How a round about tool use is settled (empty: like any other round).

    ``voters``: only these scorers' weights count. ``eligible``: only these candidates can win."""

    voters: list[str] = field(default_factory=list)
    eligible: list[bool] | None = None


_ACTION_WORDS = {"call": "a call", "end": "the end of the answer", "text": "text"}


class _Request:
    """One request: member sessions, the accepted text and the per-request policy state."""

    def __init__(
        self, ensemble: Ensemble, messages: list[Message], config: FusionConfig, tools: ToolRequest = NO_TOOLS
    ) -> None:
        self.ensemble = ensemble
        self.messages = messages
        self.config = config
        self.tools = tools
        self.grammar: Any = None  # grammar.TextGrammar when the answer must follow a grammar
        self.parser = ToolCallStreamParser() if tools.calls_tools else None
        self._forced = ""
        self._round_notes: list[str] = []
        self._parsed: tuple[str, list[Any], list[Any]] | None = None  # the answer's calls, parsed once at the end
        self._content_sent = ""  # the answer's content streamed so far
        self.order = {m.name: i for i, m in enumerate(ensemble.members)}
        self.active: list[Member] = []
        self.sessions: dict[str, MemberSession] = {}
        self.usage: dict[str, MemberUsage] = {m.name: MemberUsage() for m in ensemble.members}
        self.text = ""
        self.round = 0
        self.verified_rounds = 0
        self.quality: dict[str, float] = {m.name: 0.0 for m in ensemble.members if m.can_draft}
        self.weights = dict(ensemble.weights) if config.keep_weights else _uniform_weights(ensemble.members)
        self.margin_scales = dict(ensemble.margin_scales) if config.keep_weights else {}
        self.exits: list[MemberExit] = []
        self.trace: list[SegmentEvent] = []
        self.result: FusionResult | None = None
        self._pending_exits: list[MemberExit] = []
        self._preflown = False
        self._unfit: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[SegmentEvent]:
        try:
            await self._open()
            finish: FinishReason | None = None
            while finish is None:
                event = await self._round()
                self.trace.append(event)
                finish = event.finish_reason
                if finish is not None:
                    self._finish(finish)
                    event = dataclasses.replace(event, result=self.result)
                yield event
        finally:
            await self._close()

    async def preflight(self) -> None:
        """The checks before any member works on the request (once): the grammar compiles, and every
        member's rendered prompt is within ``max_prompt_tokens`` and fits its context window with
        ``max_tokens`` (see :mod:`specfuse_core.limits`)."""
        if self._preflown:
            return
        self._preflown = True
        if self.tools.constrained:
            from .grammar import TextGrammar

            self.grammar = await asyncio.to_thread(TextGrammar, self.tools)
        members = [m for m in self.ensemble.members if m.name not in self._kept_out()]
        counted = await asyncio.gather(*(self._prompt_tokens(m) for m in members))
        fits = [
            PromptFit(m.name, count, m.context_window) for m, count in zip(members, counted) if count is not None
        ]
        self._unfit = check_prompts(fits, self.config, {m.name: (m.can_draft, m.can_score) for m in members})

    async def _prompt_tokens(self, member: Member) -> int | None:
        """The length of ``member``'s rendered prompt, when it can tell without doing model work."""
        measure = getattr(member, "prompt_tokens", None)
        if measure is None:
            return None
        try:
            return await measure(self.messages, self.tools)
        except Exception:  # noqa: BLE001 - a member that cannot answer fails, and exits, when its session opens
            return None

    def _kept_out(self) -> dict[str, str]:
        """Members kept out of every request by exits in earlier ones (``keep_exits``)."""
        return dict(self.ensemble.exit_evidence.exited) if self._keeps_exits else {}

    async def _open(self) -> None:
        await self.preflight()
        seed = self.config.seed

        def opener(member: Member) -> Callable[[], Awaitable[MemberSession]]:
            member_seed = None if seed is None else seed + self.order[member.name]
            return lambda: member.open_session(
                self.messages, cache=self.config.cache, seed=member_seed, tools=self.tools
            )

        self.active = list(self.ensemble.members)
        for name, reason in self._kept_out().items():
            self._exit(name, f"exited in an earlier request (keep_exits): {reason}")
        for name, reason in self._unfit.items():
            self._exit(name, reason)
        opened = await self._call_all(self.active, opener, kind=None, calls=[])
        self.sessions = dict(opened)
        self.ensemble._open_sessions += len(self.sessions)
        self._require_roles()

    async def _close(self) -> None:
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            try:
                await session.aclose()
            finally:
                self.ensemble._open_sessions -= 1

    def _finish(self, finish: FinishReason) -> None:
        for name, session in self.sessions.items():
            self.usage[name] = _copy_usage(session.usage)
        content, tool_calls, invalid = (
            self._parsed if self._parsed is not None else (self.text, [], [])
        )
        self.result = FusionResult(
            text=self.text,
            finish_reason=finish,
            content=content,
            tool_calls=tuple(tool_calls),
            invalid_tool_calls=tuple(invalid),
            trace=tuple(self.trace),
            usage=self.usage,
            exits=tuple(self.exits),
            output_tokens=self._output_tokens(self.text),
            members=tuple(m.name for m in self.ensemble.members),
            notes={m.name: tuple(m.notes) for m in self.ensemble.members if getattr(m, "notes", None)},
        )
        if self.config.keep_weights and self.config.weights:
            self.ensemble.weights = dict(self.weights)
        if self.config.keep_weights and self.config.normalize in scoring.STATEFUL_NORMALIZATIONS:
            self.ensemble.margin_scales = dict(self.margin_scales)
        if self._keeps_exits:
            self.ensemble._add_exit_evidence(self.quality, self.verified_rounds)

    @property
    def _keeps_exits(self) -> bool:
        return self.config.exit and self.config.keep_exits

    # -- member calls and exits -----------------------------------------------------------------

    def _exit(self, name: str, reason: str, p: float | None = None, entropy: float | None = None) -> None:
        self.active = [m for m in self.active if m.name != name]
        session = self.sessions.get(name)
        if session is not None:
            self.usage[name] = _copy_usage(session.usage)
        record = MemberExit(round=self.round, member=name, reason=reason, p=p, entropy=entropy)
        self.exits.append(record)
        self._pending_exits.append(record)

    async def _call_all(
        self,
        members: Sequence[Member],
        make_call: Callable[[Member], Callable[[], Awaitable[T]]],
        *,
        kind: str | None,
        calls: list[MemberCall],
    ) -> list[tuple[str, T]]:
        """Run one call per member concurrently. A member whose call fails exits with the reason."""

        async def timed(member: Member) -> tuple[float, T]:
            start = time.perf_counter()
            value = await make_call(member)()
            return time.perf_counter() - start, value

        outcomes = await asyncio.gather(*(timed(m) for m in members), return_exceptions=True)
        results: list[tuple[str, T]] = []
        for member, outcome in zip(members, outcomes):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                prefix = "context window full" if isinstance(outcome, ContextWindowFull) else type(outcome).__name__
                self._exit(member.name, f"{prefix}: {outcome}")
                continue
            seconds, value = outcome
            if kind is not None:
                tokens = value.tokens if isinstance(value, Draft) else 0
                calls.append(MemberCall(member.name, kind, tokens, round(seconds, 6)))  # type: ignore[arg-type]
            results.append((member.name, value))
        return results

    def _require_roles(self) -> None:
        failures = "; ".join(f"{x.member}: {x.reason}" for x in self.exits) or "none"
        if not any(m.can_draft for m in self.active):
            raise NoActiveMembersError(f"no drafter left in the ensemble (exits: {failures})")
        if not any(m.can_score for m in self.active) and sum(m.can_draft for m in self.active) > 1:
            raise NoActiveMembersError(f"no scorer left in the ensemble (exits: {failures})")

    def _output_tokens(self, text: str) -> int:
        return self._counter().count_tokens(text)

    def _counter(self) -> MemberSession:
        """The session whose tokenizer counts the budget: the first member's, while it is open."""
        for member in self.ensemble.members:
            if member.name in self.sessions:
                return self.sessions[member.name]
        raise NoActiveMembersError("no member session is open")

    # -- one round ------------------------------------------------------------------------------

    async def _round(self) -> SegmentEvent:
        config = self.config
        self.round += 1
        round_start = time.perf_counter()
        calls: list[MemberCall] = []
        drafters = [m for m in self.active if m.can_draft]
        solo = len(drafters) == 1
        grammar_start = self._grammar_seconds()
        self._round_notes = []
        self._forced = self.grammar.forced(self.text) if self.grammar is not None else ""
        if self._forced:
            self._sync_sessions(self.text + self._forced)
        accepted = self.text + self._forced
        if self.grammar is not None and self.grammar.must_end(accepted):
            proposals = [_Proposal("", True)]  # the grammar allows nothing more: no drafting round
        else:
            budget = max(1, min(config.segment_tokens, config.max_tokens - self._output_tokens(accepted)))
            # With a grammar, stop strings apply to accepted text only (never inside a call or JSON answer).
            stop = config.stop if self.grammar is None else ()
            sampling = SamplingParams(config.draft_temperature, config.draft_top_p, None, stop)

            def drafting(member: Member) -> Callable[[], Awaitable[Draft]]:
                return lambda: self.sessions[member.name].draft(budget, sampling)

            drafts = await self._call_all(drafters, drafting, kind="draft", calls=calls)
            self._require_roles()
            proposals = self._proposals(drafts, trim=not solo)
        draft_s = time.perf_counter() - round_start

        scorer_names: list[str] = []
        matrix: list[list[float | None]] = []
        totals = [1.0] * len(proposals)
        winner = 0
        verify_start = time.perf_counter()
        if len(proposals) > 1:
            scorer_names, matrix = await self._verify(proposals, calls)
            totals, winner = self._select(proposals, scorer_names, matrix)
        verify_s = time.perf_counter() - verify_start

        weights_used = dict(self.weights)
        if len(proposals) > 1:
            self.verified_rounds += 1
            self._update_policies(proposals, scorer_names, matrix, totals, winner)
        accepted, finish = self._broadcast(proposals[winner] if proposals else None)
        content, deltas, finish = self._parse_segment(accepted, finish)
        exits, self._pending_exits = tuple(self._pending_exits), []
        return SegmentEvent(
            round=self.round,
            text=accepted,
            content=content,
            tool_calls=tuple(deltas),
            forced=self._forced,
            notes=tuple(self._round_notes),
            winners=tuple(proposals[winner].drafters) if proposals else (),
            candidates=tuple(Candidate(p.text, p.ends, tuple(p.drafters)) for p in proposals),
            scorers=tuple(scorer_names),
            scores=tuple(tuple(row) for row in matrix),
            totals=tuple(totals),
            weights=weights_used,
            active=tuple(m.name for m in self.active),
            exits=exits,
            calls=tuple(calls),
            timings=Timings(
                round(draft_s, 6),
                round(verify_s, 6),
                round(time.perf_counter() - round_start, 6),
                round(self._grammar_seconds() - grammar_start, 6),
            ),
            consensus=len(proposals) == 1,
            solo=solo,
            finish_reason=finish,
        )

    def _proposals(self, drafts: list[tuple[str, Draft]], *, trim: bool) -> list[_Proposal]:
        """Segment boundaries (§3.2) and merging of identical drafts (§3.3)."""
        proposals: dict[tuple[str, bool], _Proposal] = {}
        for name, draft in drafts:
            text = trim_to_word_boundary(draft.text, draft.next_text) if trim and draft.hit_budget else draft.text
            ended = draft.ended
            if self.tools.calls_tools and self.tools.response_schema is None:
                tagged = add_missing_call_tag(self.text + self._forced, text)
                if tagged is not None:
                    note = "a call written another way (no tag, or a code fence); made canonical"
                    self._round_notes.append(f"{name}: {note}")
                    text = tagged
            if self.grammar is not None:
                text, ended = self._grammatical(name, text, ended)
            if not text and not ended:
                continue
            proposals.setdefault((text, ended), _Proposal(text, ended)).drafters.append(name)
        return list(proposals.values())

    def _grammatical(self, name: str, text: str, ended: bool) -> tuple[str, bool]:
        """Cut a draft to its longest prefix the grammar allows; it may end only where the grammar is complete."""
        accepted = self.text + self._forced
        valid = self.grammar.valid_prefix_length(accepted, text)
        if valid < len(text):
            cut = f"draft cut to its longest valid prefix ({valid} of {len(text)} characters)"
            self._round_notes.append(f"{name}: {cut}")
            text, ended = text[:valid], False
        if ended and not self.grammar.is_complete(accepted, text):
            closing = self.grammar.forced(accepted + text)
            if closing and self.grammar.is_complete(accepted, text + closing):
                self._round_notes.append(f"{name}: draft ended before the text the grammar forces ({closing!r}); added")
                return text + closing, True
            self._round_notes.append(f"{name}: draft ended where the grammar is incomplete; kept as a continuation")
            ended = False
        return text, ended

    def _grammar_seconds(self) -> float:
        """Time spent on the grammar so far: the engine's checks plus every session's masks."""
        if self.grammar is None:
            return 0.0
        return self.grammar.seconds + sum(getattr(s, "grammar_seconds", 0.0) for s in self.sessions.values())

    def _sync_sessions(self, text: str) -> None:
        for member in self.active:
            self.sessions[member.name].accept(text)

    def _parse_segment(
        self, accepted: str, finish: FinishReason | None
    ) -> tuple[str, list[ToolCallDelta], FinishReason | None]:
        """Content and tool-call deltas of an accepted segment; a finished answer with calls ends in ``tool_calls``.

        A call that repeats an earlier one (same name, same arguments) is never made: the answer is cut
        back to before it and ends there, with a note in the trace.
        """
        if self.parser is None:
            return accepted, [], finish
        earlier = len(self.parser.calls)
        content, deltas = self.parser.feed(accepted)
        repeat = _first_repeat(self.parser.calls, earlier)
        if repeat is not None:
            call = self.parser.calls[repeat]
            self._round_notes.append(
                f"{REPEATED_CALL_NOTE} {call.name}({call.arguments_json()}): the repeat is dropped and the answer "
                "ends before it"
            )
            self.text = self.text[: _call_start(self.text, self.parser.ids.index(call.id))].rstrip()
            self._parsed = parse_tool_calls(self.text, self.parser.ids)
            new_content = self._parsed[0][len(self._content_sent) :]
            self._content_sent = self._parsed[0]
            return new_content, [d for d in deltas if d.index < repeat], "tool_calls" if self._parsed[1] else "stop"
        if finish is not None:
            tail, last = self.parser.finish()
            content, deltas = content + tail, deltas + last
            self._parsed = parse_tool_calls(self.text, self.parser.ids)
            if finish == "stop" and self._parsed[1]:
                finish = "tool_calls"
        self._content_sent += content
        return content, deltas, finish

    async def _verify(
        self, proposals: list[_Proposal], calls: list[MemberCall]
    ) -> tuple[list[str], list[list[float | None]]]:
        """Every active scorer scores every candidate: the raw matrix ``s_j(i)``."""
        pairs = [(p.text, p.ends) for p in proposals]
        scorers = [m for m in self.active if m.can_score]

        def scoring_call(member: Member) -> Callable[[], Awaitable[list[Any]]]:
            return lambda: self.sessions[member.name].score(pairs)

        scored = await self._call_all(scorers, scoring_call, kind="score", calls=calls)
        if not scored:
            self._require_roles()
            raise NoActiveMembersError(f"every scorer failed in round {self.round}")
        mode = self.config.score_mode
        names = [name for name, _ in scored]
        matrix: list[list[float | None]] = []
        for _, token_scores in scored:
            span = None
            if self.config.score_span == "leading":
                span = scoring.leading_span([len(ts.logprobs) for ts in token_scores])
            matrix.append([scoring.candidate_score(ts.logprobs, ts.logits, mode, span) for ts in token_scores])
        return names, matrix

    def _select(
        self, proposals: list[_Proposal], scorer_names: list[str], matrix: list[list[float | None]]
    ) -> tuple[list[float], int]:
        """Normalise per scorer, aggregate with the weights, pick the winner (§3.5–3.6)."""
        config = self.config
        drafters = [p.drafters for p in proposals]
        margins = None
        if config.normalize == "calibrated":
            voting = scoring.voting_scores(matrix, scorer_names, drafters, config.exclude_self_scores)
            for name, row in zip(scorer_names, voting):
                self.margin_scales[name] = scoring.update_margin_scale(
                    self.margin_scales.get(name, scoring.MarginScale()), row
                )
            margins = [self.margin_scales[name].value for name in scorer_names]
        weights = [self.weights.get(name, 0.0) for name in scorer_names]
        decision = self._call_decision(proposals, scorer_names)
        if decision.voters:
            weights = [w if name in decision.voters else 0.0 for name, w in zip(scorer_names, weights)]
        return scoring.round_winner(
            matrix,
            scorer_names,
            drafters,
            weights,
            self.order,
            config,
            texts=[p.text for p in proposals],
            lengths=[len(p.text) + p.ends for p in proposals],
            typical_margins=margins,
            eligible=decision.eligible,
        )

    def _call_decision(self, proposals: list[_Proposal], scorer_names: list[str]) -> _CallDecision:
        """Who settles a round about tool use (``tool_vote="native"``): one whose candidates disagree
        on opening a call, or on what follows a finished call (end the turn, call again, write on),
        also when every candidate first finishes the call that is open (a candidate that stops just
        before the call's forced closing tag counts as closing it and going on). The members whose own
        template shows the tools decide: when all of their drafts take the same action, candidates
        taking another are not eligible; when they differ, only their scores vote. Every other round
        (and a named tool, or a single required call, where the grammar decides): no restriction."""
        tools = self.tools
        if self.config.tool_vote != "native" or not tools.calls_tools or tools.choice not in ("auto", "required"):
            return _CallDecision()
        accepted = self.text + self._forced
        splits = [past_open_call(accepted, self._with_forced_closing(accepted, p)) for p in proposals]
        after_calls = [split for split in splits if split is not None]
        if len(after_calls) < len(splits):
            return _CallDecision()
        actions = [tool_action(after, rest, p.ends) for (after, rest), p in zip(after_calls, proposals)]
        if not decides_tool_use(after_calls[0][0], actions):
            return _CallDecision()
        question = f"tool use ({' / '.join(sorted(set(actions)))})"
        drafted = {actions[i] for i, p in enumerate(proposals) for name in p.drafters if self._native(name)}
        if len(drafted) == 1:
            (action,) = drafted
            note = f"the members whose templates show the tools all drafted {_ACTION_WORDS[action]}"
            self._round_notes.append(f"{question}: {note}")
            return _CallDecision(eligible=[a == action for a in actions])
        native = [name for name in scorer_names if self._native(name)]
        if not native or len(native) == len(scorer_names):
            return _CallDecision()
        note = f"voted by the members whose templates show the tools ({', '.join(native)})"
        self._round_notes.append(f"{question}: {note}")
        return _CallDecision(voters=native)

    def _with_forced_closing(self, accepted: str, proposal: _Proposal) -> str:
        """A candidate that would continue inside the open call, with the text the grammar forces after it."""
        if self.grammar is None or proposal.ends or not inside_call(accepted + proposal.text):
            return proposal.text
        return proposal.text + self.grammar.forced(accepted + proposal.text)

    def _native(self, name: str) -> bool:
        session = self.sessions.get(name)
        return session is not None and session.native_tools

    def _update_policies(
        self,
        proposals: list[_Proposal],
        scorer_names: list[str],
        matrix: list[list[float | None]],
        totals: list[float],
        winner: int,
    ) -> None:
        config = self.config
        credits = policies.round_quality(totals, winner, config.exit_quality)
        for proposal, credit in zip(proposals, credits):
            for name in proposal.drafters:
                self.quality[name] = self.quality.get(name, 0.0) + credit
        if config.weights and len(scorer_names) > 1:
            columns = [[i for i, p in enumerate(proposals) if name in p.drafters] for name in scorer_names]
            rewards = policies.hedge_rewards(matrix, columns)
            eta = policies.hedge_learning_rate(
                config.weights_eta0, len(scorer_names), self.verified_rounds, config.weights_schedule
            )
            updated = policies.hedge_update([self.weights[n] for n in scorer_names], rewards, eta)
            share = sum(self.weights[n] for n in scorer_names)
            for name, w in zip(scorer_names, updated):
                self.weights[name] = w * share
        if config.exit:
            candidates = [m.name for m in self.active if m.can_draft]
            if config.exit_rule == "lead":
                kept = self.ensemble.exit_evidence if self._keeps_exits else policies.ExitEvidence()
                decision = policies.decide_exits_by_lead(
                    [kept.quality.get(n, 0.0) + self.quality[n] for n in candidates],
                    kept.rounds + self.verified_rounds,
                    min_rounds=config.exit_min_rounds,
                    z=config.exit_lead_z,
                )
            else:
                decision = policies.decide_exits(
                    [self.quality[n] for n in candidates],
                    self.verified_rounds,
                    min_rounds=config.exit_min_rounds,
                    temperature=config.exit_temperature,
                    entropy_threshold=config.exit_entropy,
                    share=config.exit_share,
                )
            for i in decision.exiting:
                reason = f"low cumulative {config.exit_quality}"
                if config.exit_rule == "lead":
                    reason = f"significant lead against it ({config.exit_quality})"
                self._exit(candidates[i], reason, p=decision.p[i], entropy=decision.entropy)
                if self._keeps_exits:
                    self.ensemble._keep_out(candidates[i], reason)

    def _broadcast(self, proposal: _Proposal | None) -> tuple[str, FinishReason | None]:
        """Append the winner, apply stop strings and the token budget, sync every session (§3.7)."""
        before = self.text
        if proposal is None:  # every drafter returned nothing: there is nothing more to say
            self.text = before + self._forced
            if self.grammar is not None and not self.grammar.is_complete(before, self._forced):
                # Every draft was cut to nothing: the answer cannot go on and is unfinished, like a spent budget.
                self._round_notes.append("no draft continued the answer under the grammar; it ends unfinished")
                return self._forced, "length"
            return self._forced, "stop"
        text = before + self._forced + proposal.text
        finish: FinishReason | None = "stop" if proposal.ends else None
        stop_at = find_stop(text, self.config.stop, len(before))
        stop_is_allowed = stop_at is not None and (
            self.grammar is None or self.grammar.is_complete(before, text[len(before) : stop_at])
        )
        if stop_is_allowed:
            text, finish = text[:stop_at], "stop"
        if finish is None and self._output_tokens(text) >= self.config.max_tokens:
            text, finish = self._within_budget(text), "length"
        if finish is None and self.round >= self.config.max_tokens:
            finish = "length"  # a round adds at least one token, unless tokens merge across segments forever
        self.text = text
        self._sync_sessions(text)
        return text[len(before) :], finish


    def _within_budget(self, text: str) -> str:
        """``text`` cut to at most ``max_tokens`` tokens. A cut text can re-encode one token longer
        (its last characters tokenize differently alone), so cut again until it fits."""
        counter, budget = self._counter(), self.config.max_tokens
        cut = counter.truncate_to_tokens(text, budget)
        while budget > 1 and counter.count_tokens(cut) > self.config.max_tokens:
            budget -= 1
            cut = counter.truncate_to_tokens(text, budget)
        return cut


def _first_repeat(calls: Sequence[ToolCall], start: int) -> int | None:
    """The index of the first call from ``start`` on with the name and arguments of an earlier call."""
    for index in range(start, len(calls)):
        if any((c.name, c.arguments) == (calls[index].name, calls[index].arguments) for c in calls[:index]):
            return index
    return None


def _call_start(text: str, ordinal: int) -> int:
    """Where the ``ordinal``-th ``<tool_call>`` of ``text`` starts."""
    position = -1
    for _ in range(ordinal + 1):
        position = text.index(CALL_OPEN, position + 1)
    return position


def _copy_usage(usage: MemberUsage) -> MemberUsage:
    return MemberUsage(usage.prompt_tokens, usage.generated_tokens, usage.scored_tokens, usage.calls)
