"""Tool requests, the canonical call syntax, the parsers and tool messages (pure Python, no model)."""

from __future__ import annotations

import json

import pytest

from specfuse_core.errors import InvalidRequestError
from specfuse_core.messages import validate_messages
from specfuse_core.prompting import NO_NATIVE_SUPPORT, ToolSupport, member_prompt, probe_tool_support
from specfuse_core.tools import (
    ToolCallStreamParser,
    add_missing_call_tag,
    parse_tool_calls,
    render_tool_call,
    tool_request,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}


def test_tool_request_normalises_shapes_and_choices() -> None:
    request = tool_request([WEATHER, TIME])
    assert [t["function"]["name"] for t in request.tools] == ["get_weather", "get_time"]
    assert request.tools[1] == {"type": "function", "function": {"name": "get_time", "parameters": TIME["parameters"]}}
    assert (request.choice, request.calls_tools, request.constrained) == ("auto", True, True)
    assert tool_request([WEATHER], "any").choice == "required"
    assert tool_request([WEATHER], True).choice == "required"
    named = tool_request([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert (named.choice, named.name) == ("named", "get_time")
    assert tool_request([WEATHER], "get_weather").name == "get_weather"
    off = tool_request([WEATHER], "none")
    assert (off.calls_tools, off.constrained, off.offered_tools) == (False, False, ())
    assert tool_request().constrained is False
    assert tool_request([WEATHER], parallel_tool_calls=False).parallel is False


def test_response_format_shapes() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert tool_request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}).response_schema == schema
    assert tool_request(response_format={"type": "json_object"}).response_schema == {}
    assert tool_request(response_format={"type": "text"}).response_schema is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tools": [WEATHER], "tool_choice": "get_time"}, "'get_time', which is not among the tools"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER, WEATHER]}, "duplicate tool name"),
        ({"tools": [{"type": "retrieval"}]}, "only function tools"),
        ({"tools": [{"name": "bad name!"}]}, "the name must be"),
        ({"tools": [{"name": "x", "parameters": {"type": "array"}}]}, "type object"),
        ({"response_format": {"type": "json_schema"}}, "needs json_schema.schema"),
        ({"response_format": {"type": "yaml"}}, "response_format type"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "forces a tool call",
        ),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tool_requests_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        tool_request(**kwargs)


def test_canonical_call_round_trips_with_unicode() -> None:
    text = render_tool_call("get_weather", {"city": "你好"})
    assert text == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "你好"}}\n</tool_call>'
    content, calls, invalid = parse_tool_calls("Let me check.\n" + text)
    assert content == "Let me check."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "你好"})]
    assert invalid == []
    assert json.loads(calls[0].to_openai()["function"]["arguments"]) == {"city": "你好"}
    assert calls[0].id.startswith("call_")


def test_parse_reports_cut_and_broken_calls_as_invalid() -> None:
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    content, calls, invalid = parse_tool_calls(cut, ids=["call_1"])
    assert (content, calls) == ("", [])
    assert invalid[0].id == "call_1" and invalid[0].name == "get_weather" and "cut off" in invalid[0].error
    _, calls, invalid = parse_tool_calls("<tool_call>\n{not json}\n</tool_call>")
    assert calls == [] and "not valid JSON" in invalid[0].error


def _stream(segments: list[str]) -> tuple[str, dict[int, dict], ToolCallStreamParser]:
    parser = ToolCallStreamParser()
    content = ""
    calls: dict[int, dict] = {}
    for segment in segments:
        text, deltas = parser.feed(segment)
        content += text
        for d in deltas:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = d.id or entry["id"]
            entry["name"] = d.name if d.name is not None else entry["name"]
            entry["arguments"] += d.arguments
    text, deltas = parser.finish()
    content += text
    for d in deltas:
        calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})["arguments"] += d.arguments
    return content, calls, parser


def test_stream_parser_holds_back_partial_tags_and_rebuilds_calls() -> None:
    answer = "Sure.\n" + render_tool_call("get_weather", {"city": "Paris"}) + "\n" + render_tool_call("get_time", {})
    for size in (1, 3, 7, 50):
        segments = [answer[i : i + size] for i in range(0, len(answer), size)]
        parser = ToolCallStreamParser()
        for segment in segments:
            text, _ = parser.feed(segment)
            assert "<" not in text, f"a tag leaked into the content: {text!r}"
        content, calls, parser = _stream(segments)
        assert content.strip() == "Sure."
        assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
        assert [json.loads(c["arguments"]) for c in calls.values()] == [{"city": "Paris"}, {}]
        assert [c["id"] for c in calls.values()] == parser.ids
        # the same ids as the final parse, so streamed and final calls match
        assert [c.id for c in parse_tool_calls(answer, parser.ids)[1]] == parser.ids


def test_stream_parser_passes_plain_text_and_lone_angle_brackets() -> None:
    content, calls, _ = _stream(["a < b and <tool", "s> are fine"])
    assert content == "a < b and <tools> are fine"
    assert calls == {}


def test_tool_messages_are_validated() -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
    ]
    clean = validate_messages(history)
    assert clean[1] == {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}}]}
    assert clean[2] == {"role": "tool", "content": "cold", "tool_call_id": "c1", "name": "get_weather"}
    with pytest.raises(InvalidRequestError, match="matches no tool call"):
        validate_messages([*history[:2], {"role": "tool", "tool_call_id": "c9", "content": "x"}])
    with pytest.raises(InvalidRequestError, match="needs tool_call_id"):
        validate_messages([*history[:2], {"role": "tool", "content": "x"}])
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        validate_messages([{"role": "assistant", "tool_calls": [{"id": "a", "name": "f", "arguments": "{"}]}])


def test_tool_use_blocks_become_calls_or_are_dropped_when_duplicated() -> None:
    block = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Rome"}}
    only_blocks = validate_messages([{"role": "assistant", "content": [{"type": "text", "text": "ok"}, block]}])
    assert only_blocks[0]["tool_calls"] == [{"id": "t1", "name": "get_weather", "arguments": {"city": "Rome"}}]
    both = validate_messages(
        [{"role": "assistant", "content": [block], "tool_calls": [{"id": "t1", "name": "get_weather", "args": {"city": "Rome"}}]}]
    )
    assert both[0]["tool_calls"] == only_blocks[0]["tool_calls"] and both[0]["content"] == ""
    with pytest.raises(InvalidRequestError, match="only valid in an assistant message"):
        validate_messages([{"role": "user", "content": [block]}])


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _jinja(template: str):
    from jinja2 import Template

    return lambda messages, tools: Template(template).render(messages=messages, tools=tools, add_generation_prompt=True)


def test_probe_detects_templates_that_drop_tools() -> None:
    assert probe_tool_support(_jinja(CHATML)) == NO_NATIVE_SUPPORT
    with_tools = "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}" + CHATML.replace(
        "{{ m['content'] }}", "{{ m['content'] }}{% for c in m.get('tool_calls') or [] %}{{ c | tojson }}{% endfor %}"
    )
    assert probe_tool_support(_jinja(with_tools)) == ToolSupport(tools=True, history=True)


def test_fallback_rendering_shows_tools_calls_and_results() -> None:
    request = tool_request([WEATHER])
    messages = validate_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        ]
    )
    prompt = member_prompt(messages, request, NO_NATIVE_SUPPORT, _jinja(CHATML))
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>' in prompt
    assert "<|im_start|>user\n<tool_response>\ncold\n</tool_response><|im_end|>" in prompt
    assert "<|im_start|>tool" not in prompt
    plain = [{"role": "user", "content": "hi"}]
    assert member_prompt(plain, tool_request(), NO_NATIVE_SUPPORT, _jinja(CHATML)) == _jinja(CHATML)(plain, None)


def test_a_bare_call_object_gets_its_tag_only_outside_calls() -> None:
    bare = '{"name": "get_weather", "arguments": {"ci'
    assert add_missing_call_tag("", bare) == "<tool_call>\n" + bare
    assert add_missing_call_tag("Checking.\n", " " + bare) == "<tool_call>\n" + bare
    assert add_missing_call_tag("Checking. ", bare) is None  # mid-line: plain text
    assert add_missing_call_tag("<tool_call>\n", bare) is None  # already inside a call
    done = render_tool_call("get_time", {}) + "\n"
    assert add_missing_call_tag(done, bare) == "<tool_call>\n" + bare
    assert add_missing_call_tag("", '{"city": "Paris"}') is None


def test_a_pretty_printed_call_in_a_fence_is_made_canonical() -> None:
    # Qwen2.5-Coder-0.5B's usual way on BFCL prompts: a fenced, indented call object.
    draft = '```json\n{\n  "name": "calculate_triangle_area",\n  "arg'
    tagged = add_missing_call_tag("", draft)
    assert tagged == '<tool_call>\n{"name": "calculate_triangle_area",\n  "arg'
    whole = tagged + 'uments": {"base": 10}\n}\n</tool_call>'
    (call,) = parse_tool_calls(whole)[1]
    assert (call.name, call.arguments) == ("calculate_triangle_area", {"base": 10})
    assert add_missing_call_tag("", "```json\n{") is None  # not yet recognisable as a call
    # cut by the draft's token budget inside the first key (measured: Qwen's 8-token draft on
    # "What is the weather in San Francisco, CA?")
    assert add_missing_call_tag("", '```json\n{\n  "name":') == '<tool_call>\n{"name":'
    assert add_missing_call_tag("", '{"na') == '<tool_call>\n{"na'
    assert add_missing_call_tag("", '{"city":') is None
    assert add_missing_call_tag("", '{"name":"x"') == '<tool_call>\n{"name": "x"'


@pytest.mark.parametrize(
    "answer",
    [
        "Sure.\n" + render_tool_call("get_time", {}),
        "  Hi there.  \n\n",
        render_tool_call("a", {"x": 1}) + "\n" + render_tool_call("b", {}) + "\nDone.\n",
        "One\n\ntwo <tool" + "_call is not a tag",
        "x" + render_tool_call("a", {}) + " y " + render_tool_call("b", {}) + "  ",
    ],
)
def test_streamed_content_equals_parsed_content_for_every_split(answer: str) -> None:
    expected = parse_tool_calls(answer)[0]
    for size in range(1, 12):
        parser = ToolCallStreamParser()
        streamed = "".join(parser.feed(answer[i : i + size])[0] for i in range(0, len(answer), size))
        assert streamed + parser.finish()[0] == expected, (size, answer)


def test_a_call_in_a_code_fence_becomes_canonical() -> None:
    fenced = '```json\n{"name": "get_time", "arguments": {}}'
    assert add_missing_call_tag("", fenced) == '<tool_call>\n{"name": "get_time", "arguments": {}}'
    done = render_tool_call("get_time", {})
    assert add_missing_call_tag(done, "\n```\nDone.") == "Done."
    assert add_missing_call_tag(done, "\nDone.") is None
    assert add_missing_call_tag("", "```python\nprint(1)") is None
