"""The engine's grammar check with scripted members (no model): drafts from members that cannot mask
their tokens (like remote ones) are cut to their longest valid prefix, and the trace says so."""

from __future__ import annotations

import json

from scripted import ScriptedMember
from specfuse_core import Ensemble, FusionConfig

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def test_invalid_drafts_are_cut_to_their_valid_prefix_and_noted():
    # free text before the JSON is invalid; "{" is forced by the grammar, so the draft after it
    # starts inside the object: '"a": 12}' is valid, the trailing ' trailing words' is not.
    chatty = ScriptedMember("chatty", drafts=[(' "a": 12} trailing words', True)])
    quiet = ScriptedMember("quiet", drafts=[('"a": 7}', True)], prob=lambda accepted, text, ends: 0.1)
    ensemble = Ensemble([chatty, quiet], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    first = result.trace[0]
    assert first.forced == "{"
    assert [c.text for c in first.candidates] == [' "a": 12}', '"a": 7}']
    assert any("chatty: draft cut to its longest valid prefix" in note for note in first.notes)
    assert json.loads(result.text) == {"a": 12}
    assert result.finish_reason == "stop"


def test_an_end_where_the_grammar_is_incomplete_becomes_a_continuation():
    early = ScriptedMember("early", drafts=[('"a"', True), (": 3}", True)])
    ensemble = Ensemble([early], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    assert result.text == '{"a": 3}'
    assert "kept as a continuation" in result.trace[0].notes[0]
    assert ensemble.open_sessions == 0


def test_drafts_all_cut_to_nothing_end_the_answer_unfinished_not_as_a_normal_stop():
    stubborn = ScriptedMember("stubborn", drafts=[("I will not write JSON.", False)])
    ensemble = Ensemble([stubborn], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    assert result.text == "{"
    assert result.finish_reason == "length"
    assert any("ends unfinished" in note for note in result.trace[-1].notes)


def test_an_unfinished_call_that_cannot_go_on_is_reported_invalid():
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    stubborn = ScriptedMember("stubborn", drafts=[('{"name": "f", "arguments": {"a": 1', False), ("oops", False)])
    ensemble = Ensemble([stubborn], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], tools=tools, tool_choice="required")
    assert result.finish_reason == "length"
    assert not result.tool_calls and len(result.invalid_tool_calls) == 1
