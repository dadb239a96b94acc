"""Scripted members for unit-testing the round loop without any model (not evidence of integration)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specfuse_core.member import Draft, SamplingParams, TokenScores, role_flags
from specfuse_core.trace import MemberUsage

ScoreFn = Callable[[str, str, bool], float]
"""(accepted_text, candidate_text, ends) -> per-token probability the member assigns."""


@dataclass
class ScriptedMember:
    """Drafts come from ``drafts`` (one per round; the last repeats); ``(text, ends)`` pairs.

    Scores: every candidate gets ``n_tokens = len(text.split()) + ends`` tokens of probability
    ``prob(accepted, text, ends)``. ``fail_on`` makes a call of that kind raise. ``native_tools``:
    whether its sessions report a template that shows the offered tools (when tools are offered).
    """

    name: str
    drafts: Sequence[tuple[str, bool]]
    prob: ScoreFn = lambda accepted, text, ends: 0.5
    role: str = "both"
    fail_on: str | None = None
    fail_after: int = 0
    context_window: int | None = None
    native_tools: bool = False
    sessions: list[ScriptedSession] = field(default_factory=list)

    @property
    def can_draft(self) -> bool:
        return role_flags(self.role)[0]

    @property
    def can_score(self) -> bool:
        return role_flags(self.role)[1]

    async def open_session(
        self, messages, *, cache: bool = True, seed: int | None = None, tools=None
    ) -> ScriptedSession:
        if self.fail_on == "open":
            raise ConnectionError(f"{self.name} is unreachable")
        session = ScriptedSession(self)
        session.native_tools = self.native_tools and bool(tools is not None and tools.offered_tools)
        self.sessions.append(session)
        return session


class ScriptedSession:
    def __init__(self, member: ScriptedMember) -> None:
        self.member = member
        self.accepted = ""
        self.usage = MemberUsage(prompt_tokens=3)
        self.native_tools = False
        self.draft_calls = 0
        self.score_calls = 0
        self.closed = False

    def _maybe_fail(self, kind: str, count: int) -> None:
        if self.member.fail_on == kind and count > self.member.fail_after:
            raise TimeoutError(f"{self.member.name} timed out during {kind}")

    async def draft(self, max_new_tokens: int, sampling: SamplingParams) -> Draft:
        self.draft_calls += 1
        self._maybe_fail("draft", self.draft_calls)
        drafts = self.member.drafts
        text, ends = drafts[min(self.draft_calls - 1, len(drafts) - 1)]
        words = re.findall(r"\s*\S+\s*", text) or [text]
        hit_budget = not ends and len(words) >= max_new_tokens
        text = "".join(words[:max_new_tokens])
        self.usage.calls += 1
        self.usage.generated_tokens += len(words)
        return Draft(text=text, ended=ends, hit_budget=hit_budget, tokens=len(words))

    async def score(self, candidates: Sequence[tuple[str, bool]]) -> list[TokenScores]:
        self.score_calls += 1
        self._maybe_fail("score", self.score_calls)
        self.usage.calls += 1
        out = []
        for text, ends in candidates:
            n = max(1, len(text.split()) + int(ends))
            p = self.member.prob(self.accepted, text, ends)
            out.append(TokenScores([math.log(p)] * n, [10 * p] * n))
        return out

    def accept(self, accepted_text: str) -> None:
        self.accepted = accepted_text

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])

    async def aclose(self) -> None:
        self.closed = True
