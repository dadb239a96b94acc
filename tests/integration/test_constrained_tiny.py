"""Grammar-constrained drafting with two tiny random models that have different tokenizers.

Random weights write gibberish, so without a grammar they would never produce a valid call. With
one, every member drafts under a mask compiled for its own tokenizer, so these tests can assert
that *every* answer is valid: calls parse and validate against their schema, JSON answers match
the response format, and every candidate of every round is a valid continuation.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from specfuse_core import Ensemble, FusionConfig, HFMember, InvalidRequestError
from specfuse_core.grammar import GrammarError, TextGrammar
from specfuse_core.tools import tool_request

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Rome"]},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two digits",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "add": ADD["function"]["parameters"]}


@pytest.fixture(scope="module")
def ensemble(tiny_dirs) -> Ensemble:
    a, b = tiny_dirs
    return Ensemble(
        [HFMember(str(a), name="tiny-a"), HFMember(str(b), name="tiny-b")],
        FusionConfig(temperature=0, segment_tokens=6, max_tokens=120),
    )


def _every_candidate_valid(result, request) -> None:
    grammar = TextGrammar(request)
    accepted = ""
    for event in result.trace:
        base = accepted + event.forced
        for candidate in event.candidates:
            assert grammar.valid_prefix_length(base, candidate.text) == len(candidate.text), (base, candidate)
            if candidate.ends:
                assert grammar.is_complete(base, candidate.text)
        accepted += event.text
    assert accepted == result.text


def test_named_tool_gives_a_valid_call_and_forced_text_skips_drafting(ensemble):
    result = ensemble.generate(MESSAGES, tools=[WEATHER, ADD], tool_choice="get_weather")
    assert result.finish_reason == "tool_calls", result.text
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    jsonschema.validate(result.tool_calls[0].arguments, SCHEMAS["get_weather"])
    assert result.invalid_tool_calls == () and result.content == ""
    first = result.trace[0]
    assert first.forced.startswith('<tool_call>\n{"name": "get_weather", "arguments": {'), first.forced
    _every_candidate_valid(result, tool_request([WEATHER, ADD], "get_weather"))


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_parse_and_validate(ensemble, parallel):
    result = ensemble.generate(MESSAGES, tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=parallel)
    assert result.finish_reason == "tool_calls", result.text
    assert result.tool_calls and result.invalid_tool_calls == ()
    if not parallel:
        assert len(result.tool_calls) == 1
    for call in result.tool_calls:
        jsonschema.validate(call.arguments, SCHEMAS[call.name])
    _every_candidate_valid(result, tool_request([WEATHER, ADD], "required", parallel))


def test_streamed_deltas_rebuild_the_final_calls(ensemble):
    stream = ensemble.stream(MESSAGES, tools=[WEATHER, ADD], tool_choice="required")
    calls: dict[int, dict] = {}
    content = ""
    for event in stream:
        content += event.content
        for delta in event.tool_calls:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = delta.id or entry["id"]
            entry["name"] = delta.name or entry["name"]
            entry["arguments"] += delta.arguments
    result = stream.result
    assert content == result.content
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.id, c.name, c.arguments) for c in result.tool_calls
    ]


def test_response_format_json_schema(ensemble):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    result = ensemble.generate(MESSAGES, response_format=fmt)
    assert result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), ANSWER_SCHEMA)
    _every_candidate_valid(result, tool_request(response_format=fmt))


def test_auto_answers_are_text_or_valid_calls(ensemble):
    result = ensemble.generate(MESSAGES, tools=[WEATHER, ADD], max_tokens=40)
    for call in result.tool_calls:
        jsonschema.validate(call.arguments, SCHEMAS[call.name])
    if result.finish_reason != "length":
        assert result.invalid_tool_calls == ()
    _every_candidate_valid(result, tool_request([WEATHER, ADD]))


def test_budget_cut_mid_call_is_reported_as_invalid(ensemble):
    result = ensemble.generate(MESSAGES, tools=[WEATHER], tool_choice="required", max_tokens=12)
    assert result.finish_reason == "length"
    assert result.tool_calls == ()
    assert len(result.invalid_tool_calls) == 1 and "cut off" in result.invalid_tool_calls[0].error


def test_stop_strings_never_cut_inside_a_call(ensemble):
    result = ensemble.generate(MESSAGES, tools=[WEATHER], tool_choice="required", stop=["Paris", "name"])
    assert result.finish_reason == "tool_calls", result.text
    jsonschema.validate(result.tool_calls[0].arguments, SCHEMAS["get_weather"])


def test_tool_history_round_trip(ensemble):
    history = [
        *MESSAGES,
        {"role": "assistant", "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C and sunny"},
    ]
    result = ensemble.generate(history, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert result.finish_reason in ("stop", "length")
    assert result.tool_calls == () and result.content == result.text


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"tools": [WEATHER], "tool_choice": "add"}, InvalidRequestError, "not among the tools"),
        (
            {"tools": [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}]},
            GrammarError,
            "cannot be compiled",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            InvalidRequestError,
            "forces a tool call",
        ),
    ],
)
def test_bad_requests_fail_clearly_and_leave_no_session(ensemble, options, error, message):
    with pytest.raises(error, match=message):
        ensemble.generate(MESSAGES, **options)
    assert ensemble.open_sessions == 0


def test_unmatched_tool_message_is_rejected(ensemble):
    with pytest.raises(InvalidRequestError, match="matches no tool call"):
        ensemble.generate([*MESSAGES, {"role": "tool", "tool_call_id": "nope", "content": "x"}])
    assert ensemble.open_sessions == 0


def test_cli_ask_with_tools_file(tiny_dirs, tmp_path, capsys):
    from specfuse_integrations.cli import main

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER, ADD]))
    a, b = tiny_dirs
    argv = ["ask", "Weather in Oslo?", "--member", str(a), "--member", str(b), "--tools", str(tools)]
    assert main([*argv, "--tool-choice", "add", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in out["tool_calls"]] == ["add"]
    jsonschema.validate(json.loads(out["tool_calls"][0]["function"]["arguments"]), SCHEMAS["add"])
    assert main([*argv, "--tool-choice", "get_weather", "--temperature", "0"]) == 0
    assert "tool call call_" in capsys.readouterr().out


def test_a_member_may_end_where_the_grammar_forces_only_the_closing_tag(ensemble):
    # Real masks for a real tokenizer: the end token is allowed only where the text the grammar
    # forces next completes the answer (after a call's arguments), never inside them.
    import torch

    from specfuse_core.grammar import TokenConstraint

    member = ensemble.members[0]
    vocabulary = member.grammar_vocab()
    stops = list(vocabulary.stop_token_ids)
    open_call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"'

    def end_allowed(accepted: str) -> bool:
        constraint = TokenConstraint(vocabulary, tool_request([WEATHER, ADD], "required"))
        constraint.sync(accepted)
        draft = constraint.start_draft()
        masked = draft.masked(torch.zeros(vocabulary.vocab_size))
        allowed = bool(torch.isfinite(masked[stops]).all())
        if allowed:
            draft.advance(stops[0])
            assert draft.matcher.is_terminated() and not draft.off
        return allowed

    assert not end_allowed(open_call)  # '}' may follow, or whitespace: nothing is forced yet
    assert not end_allowed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert end_allowed(open_call + "}")  # forced: '}\n</tool_call>'
    assert end_allowed(open_call + "}}\n")  # forced: '</tool_call>'
