"""Limits on the work one request may cause, checked before any member works on it.

Two checks, both before a member session opens:

- :func:`check_tool_limits` (synchronous, when the request is made): the number of tools and the size
  of the tools and ``response_format`` schemas, which bound the prompt the tools add and the grammar's
  compile time (``max_tools``, ``max_schema_bytes``);
- :func:`check_prompts` (once every member's prompt is rendered and counted): no prompt longer than
  ``max_prompt_tokens``, and every member able to hold its prompt plus ``max_tokens``
  (``context_overflow`` says whether a member that cannot fails the request or sits it out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import FusionConfig
from .errors import ContextLengthError, RequestLimitError
from .tools import ToolRequest


def json_bytes(value: object) -> int:
    """The size of ``value`` as compact UTF-8 JSON."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def check_tool_limits(tools: ToolRequest, config: FusionConfig) -> None:
    """Raise :class:`RequestLimitError` when the request offers more tools, or larger schemas, than
    ``config`` allows."""
    if config.max_tools is not None and len(tools.tools) > config.max_tools:
        raise RequestLimitError(
            f"the request offers {len(tools.tools)} tools; this ensemble accepts at most {config.max_tools} "
            "(max_tools)",
            limit="max_tools",
            param="tools",
        )
    if config.max_schema_bytes is None:
        return
    for param, value in (("tools", list(tools.tools)), ("response_format", tools.response_schema)):
        if not value:
            continue
        size = json_bytes(value)
        if size > config.max_schema_bytes:
            raise RequestLimitError(
                f"the {param} schema is {size} bytes of JSON; this ensemble accepts at most "
                f"{config.max_schema_bytes} (max_schema_bytes)",
                limit="max_schema_bytes",
                param=param,
            )


@dataclass(frozen=True)
class PromptFit:
    """One member's rendered prompt against the limits: its length and its context window."""

    member: str
    prompt_tokens: int
    context_window: int | None

    def overflows(self, max_tokens: int) -> bool:
        return self.context_window is not None and self.prompt_tokens + max_tokens > self.context_window

    def reason(self, max_tokens: int) -> str:
        return (
            f"context window too small for the request: {self.prompt_tokens} prompt tokens + max_tokens "
            f"{max_tokens} > {self.context_window}"
        )


def check_prompts(
    fits: Sequence[PromptFit], config: FusionConfig, roles: Mapping[str, tuple[bool, bool]]
) -> dict[str, str]:
    """The members to leave out of the request, with their reasons (empty: everyone fits).

    ``roles[name]`` is ``(can_draft, can_score)``. Raises :class:`RequestLimitError` for a prompt
    over ``max_prompt_tokens``, and :class:`ContextLengthError` for members that cannot hold the prompt
    plus ``max_tokens`` under ``context_overflow="fail"``, or when leaving them out would leave no
    drafter or no scorer.
    """
    limit = config.max_prompt_tokens
    for fit in fits:
        if limit is not None and fit.prompt_tokens > limit:
            raise RequestLimitError(
                f"the prompt is {fit.prompt_tokens} tokens for {fit.member}; this ensemble accepts at most "
                f"{limit} (max_prompt_tokens)",
                limit="max_prompt_tokens",
                param="messages",
            )
    over = [fit for fit in fits if fit.overflows(config.max_tokens)]
    if not over:
        return {}
    left = [name for name in roles if name not in {fit.member for fit in over}]
    if config.context_overflow == "exit" and any(roles[n][0] for n in left) and any(roles[n][1] for n in left):
        return {fit.member: fit.reason(config.max_tokens) for fit in over}
    details = "; ".join(
        f"{fit.member} holds {fit.context_window} tokens, the prompt is {fit.prompt_tokens} and max_tokens "
        f"{config.max_tokens}"
        for fit in over
    )
    advice = (
        "shorten the messages, lower max_tokens"
        + (", or set context_overflow='exit' to leave such members out" if config.context_overflow == "fail" else "")
    )
    raise ContextLengthError(
        f"the request does not fit the context window ({details}); {advice}",
        tuple((fit.member, fit.prompt_tokens, config.max_tokens, fit.context_window or 0) for fit in over),
    )
