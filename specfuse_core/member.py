"""The protocol every member backend implements, and the values that cross it.

A :class:`Member` is a loaded model (local or remote). Per request it opens a
:class:`MemberSession` that holds the canonical token ids of ``template(messages) + R`` in the
member's own tokenizer, plus whatever cache the backend keeps. The engine only ever talks to
sessions, so it never needs to know about tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from .messages import Message
from .tools import ToolRequest
from .trace import MemberUsage

Role = Literal["both", "draft", "score"]
ROLES: tuple[str, ...] = ("both", "draft", "score")


@dataclass(frozen=True)
class SamplingParams:
    """How a drafter picks tokens. ``temperature == 0`` means greedy."""

    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Draft:
    """A drafted continuation of the accepted text.

    ``ended``: the drafter produced its end-of-turn/EOS token (not part of ``text``).
    ``hit_budget``: it stopped because it used all ``max_new_tokens``.
    ``next_text``: for a draft that hit the budget, the text its own next (greedy) token would add,
    when the drafter knows it (``""`` for an end-of-turn token); ``None`` when unknown. The engine
    uses it to decide whether the draft ended inside a word (docs/algorithm.md §3.2).
    """

    text: str
    ended: bool
    hit_budget: bool
    tokens: int
    next_text: str | None = None


@dataclass(frozen=True)
class TokenScores:
    """One scorer's per-token log-probabilities and raw logits for one candidate."""

    logprobs: Sequence[float]
    logits: Sequence[float]


class ContextWindowFull(RuntimeError):
    """Raised by a session when the next step would not fit in the model's context window."""


@runtime_checkable
class MemberSession(Protocol):
    """A member's state for one request.

    ``native_tools``: the request offers tools and this member's own chat template shows them (the
    model was trained to call them), rather than a written instruction that stands in for them.
    """

    usage: MemberUsage
    native_tools: bool

    async def draft(self, max_new_tokens: int, sampling: SamplingParams) -> Draft:
        """Generate up to ``max_new_tokens`` tokens after the accepted text."""
        ...

    async def score(self, candidates: Sequence[tuple[str, bool]]) -> list[TokenScores]:
        """Score each ``(text, ends)`` candidate as a continuation of the accepted text.

        When ``ends`` is true the member's own end-of-turn token is scored after the text.
        """
        ...

    def accept(self, accepted_text: str) -> None:
        """Set the full accepted response text (the engine calls this after every round)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in this member's tokenizer."""
        ...

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that is at most ``max_tokens`` tokens long."""
        ...

    async def aclose(self) -> None:
        """Release the request's resources (caches, connections)."""
        ...


@runtime_checkable
class Member(Protocol):
    """A model taking part in an ensemble.

    A member may also have ``async prompt_tokens(messages, tools) -> int | None``: the length of the
    prompt it would be given, counted without model work. The engine then checks the request against
    ``max_prompt_tokens`` and the member's context window before any session opens.
    """

    name: str
    role: Role

    @property
    def can_draft(self) -> bool: ...

    @property
    def can_score(self) -> bool: ...

    @property
    def context_window(self) -> int | None: ...

    async def open_session(
        self, messages: list[Message], *, cache: bool, seed: int | None, tools: ToolRequest | None = None
    ) -> MemberSession:
        """Start a request: render the prompt (with the request's tools, if any) and prepare a fresh session.

        When ``tools.constrained`` a member that can mask its own tokens drafts under the request's
        grammar; one that cannot drafts freely and the engine cuts its drafts to their valid prefix.
        """
        ...


def role_flags(role: str) -> tuple[bool, bool]:
    """``(can_draft, can_score)`` for a role name."""
    if role not in ROLES:
        from .errors import ConfigError

        raise ConfigError(f"member role must be one of {', '.join(ROLES)}, got {role!r}")
    return role in ("both", "draft"), role in ("both", "score")
