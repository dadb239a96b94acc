"""Limits on the work of one request, checked before any member session opens (scripted members)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scripted import ScriptedMember
from specfuse_core import Ensemble, FusionConfig
from specfuse_core.errors import ContextLengthError, InvalidRequestError, RequestLimitError

HI = [{"role": "user", "content": "hi"}]


class Measured(ScriptedMember):
    """A scripted member that counts its prompt as a local member does: one token per character."""

    async def prompt_tokens(self, messages: list[dict[str, Any]], tools: Any = None) -> int:
        offered = len(str(tools.tools)) if tools is not None and tools.tools else 0
        return sum(len(m["content"]) for m in messages) + offered


def members(window_a: int | None = None, window_b: int | None = None) -> list[Measured]:
    return [
        Measured("a", [("Hello there.", True)], context_window=window_a),
        Measured("b", [("Hello there.", True)], context_window=window_b),
    ]


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def test_too_many_tools_fails_when_the_request_is_made():
    ensemble = Ensemble(members(), FusionConfig(max_tools=3))
    message = "offers 4 tools; this ensemble accepts at most 3 \\(max_tools\\)"
    with pytest.raises(RequestLimitError, match=message) as caught:
        ensemble.stream(HI, tools=[tool(f"t{i}") for i in range(4)])
    assert (caught.value.limit, caught.value.param, caught.value.code) == ("max_tools", "tools", "request_too_large")
    ensemble.generate(HI, tools=[tool(f"t{i}") for i in range(3)])  # at the limit: fine


def test_a_schema_over_the_size_limit_names_its_field():
    ensemble = Ensemble(members(), FusionConfig(max_schema_bytes=1000))
    schema = {"type": "object", "properties": {"x": {"enum": [f"value{i}" for i in range(200)]}}}
    message = "response_format schema is \\d+ bytes of JSON; .* at most 1000"
    with pytest.raises(RequestLimitError, match=message) as caught:
        ensemble.stream(HI, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert caught.value.param == "response_format" and caught.value.limit == "max_schema_bytes"


def test_a_prompt_over_max_prompt_tokens_fails_before_any_session_opens():
    team = members()
    ensemble = Ensemble(team, FusionConfig(max_prompt_tokens=50))
    with pytest.raises(RequestLimitError, match="the prompt is 60 tokens for a; .* at most 50 \\(max_prompt_tokens\\)"):
        ensemble.generate([{"role": "user", "content": "x" * 60}])
    assert all(not m.sessions for m in team)


def test_a_member_that_cannot_hold_the_request_fails_it_by_default():
    team = members(window_a=100)
    ensemble = Ensemble(team, FusionConfig(max_tokens=50))
    with pytest.raises(ContextLengthError, match="a holds 100 tokens, the prompt is 60 and max_tokens 50") as caught:
        ensemble.generate([{"role": "user", "content": "x" * 60}])
    assert caught.value.overflows == (("a", 60, 50, 100),) and caught.value.code == "context_length_exceeded"
    assert isinstance(caught.value, InvalidRequestError) and all(not m.sessions for m in team)
    ensemble.generate([{"role": "user", "content": "x" * 50}])  # 50 + 50 fits in 100


def test_context_overflow_exit_leaves_the_member_out_and_says_so():
    team = members(window_a=100)
    result = Ensemble(team, FusionConfig(max_tokens=50, context_overflow="exit")).generate(
        [{"role": "user", "content": "x" * 60}]
    )
    assert result.text == "Hello there." and not team[0].sessions and team[1].sessions
    assert [(x.member, x.round) for x in result.exits] == [("a", 0)]
    assert "60 prompt tokens + max_tokens 50 > 100" in result.exits[0].reason


def test_context_overflow_exit_still_fails_when_nobody_would_be_left():
    ensemble = Ensemble(members(window_a=100, window_b=100), FusionConfig(max_tokens=50, context_overflow="exit"))
    with pytest.raises(ContextLengthError, match="a holds 100 .*; b holds 100"):
        ensemble.generate([{"role": "user", "content": "x" * 60}])


def test_check_runs_the_up_front_checks_without_iterating():
    team = members(window_a=100)
    stream = Ensemble(team, FusionConfig(max_tokens=50)).astream([{"role": "user", "content": "x" * 60}])
    with pytest.raises(ContextLengthError):
        asyncio.run(stream.check())
    assert all(not m.sessions for m in team)


def test_members_that_cannot_count_are_not_checked_up_front():
    team = [ScriptedMember("a", [("Hello there.", True)], context_window=10)]
    assert Ensemble(team, FusionConfig(max_prompt_tokens=5)).generate([{"role": "user", "content": "x" * 60}]).text


@pytest.mark.parametrize("name", ["max_prompt_tokens", "max_tools", "max_schema_bytes"])
def test_limits_must_be_positive(name: str):
    from specfuse_core import ConfigError

    with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1"):
        FusionConfig(**{name: 0})
    assert getattr(FusionConfig(**{name: None}), name) is None  # no limit
