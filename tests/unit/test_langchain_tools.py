"""LangChain tool calling and structured output: conversions only, no model.

The ensemble is real (the core round loop, grammar check, tool-call parser); its one member is
scripted: it drafts, a few words a round, the continuation of a fixed target answer chosen from the
request's messages. So these tests check what the adapter does with the core's results (LangChain
``ToolCall``s, ``tool_call_chunks``, parsers, bindings, agent plumbing), not what a model would answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel, Field, field_validator
from scripted import ScriptedMember, ScriptedSession
from typing_extensions import TypedDict

from specfuse_core import Ensemble, FusionConfig, InvalidRequestError
from specfuse_core.member import Draft
from specfuse_core.messages import validate_messages
from specfuse_integrations.langchain import SpecFuseChatModel, to_specfuse_messages

MISSING = "/nonexistent/specfuse-test-member"  # loading this would fail with ModelLoadError


# -- a scripted member that writes a chosen answer -------------------------------------------------


@dataclass
class TargetMember(ScriptedMember):
    """Drafts ``target(messages)`` a few words at a time, continuing whatever has been accepted."""

    target: Callable[[list[dict[str, Any]]], str] = lambda messages: ""

    async def open_session(self, messages, *, cache: bool = True, seed: int | None = None, tools=None):
        session = TargetSession(self, self.target(list(messages)), tools)
        self.sessions.append(session)
        return session


class TargetSession(ScriptedSession):
    def __init__(self, member: TargetMember, answer: str, tools: Any) -> None:
        super().__init__(member)
        self.answer = answer
        self.tools = tools

    async def draft(self, max_new_tokens: int, sampling: Any) -> Draft:
        self.draft_calls += 1
        self.usage.calls += 1
        assert self.answer.startswith(self.accepted), (self.answer, self.accepted)
        words = re.findall(r"\s*\S+\s*", self.answer[len(self.accepted) :])
        taken = words[:max_new_tokens]
        ends = len(words) <= max_new_tokens
        self.usage.generated_tokens += len(taken)
        return Draft(text="".join(taken), ended=ends, hit_budget=not ends, tokens=len(taken))


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """The canonical call as a member writes it (built here only to script the member)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def model_writing(target: str | Callable[[list[dict[str, Any]]], str], **options: Any) -> SpecFuseChatModel:
    member = TargetMember("scripted", [], target=target if callable(target) else (lambda messages: target))
    ensemble = Ensemble([member], FusionConfig(segment_tokens=3, temperature=0))
    return SpecFuseChatModel(ensemble=ensemble, **options)


def summed(chunks: Sequence[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def lookup(city: str) -> str:
    """Population of a city."""
    return "1000"


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: str
    punchline: str


JOKE = {"setup": "Why did the cat sit on the laptop?", "punchline": "To keep an eye on the mouse."}
ANSWER = "Let me add them.\n" + call_text("add", {"a": 2, "b": 3})


# -- messages ------------------------------------------------------------------------------------


def test_tool_history_translates_to_specfuse_messages():
    history = [
        SystemMessage("be brief"),
        HumanMessage("what is 2 + 3?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1"),
        AIMessage("It is 5."),
    ]
    clean = validate_messages(to_specfuse_messages(history))
    assert clean[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 2, "b": 3}}],
    }
    assert clean[3] == {"role": "tool", "content": "5", "tool_call_id": "c1", "name": "add"}
    assert [m["role"] for m in clean] == ["system", "user", "assistant", "tool", "assistant"]


def test_anthropic_list_content_tool_use_and_thinking_blocks():
    ai = AIMessage(
        [
            {"type": "thinking", "thinking": "they want a colour", "signature": "x"},
            {"type": "text", "text": "Hmm let me think about that"},
            {"type": "tool_use", "input": {"fav_color": "purple"}, "id": "foo", "name": "color_picker"},
        ],
        tool_calls=[{"name": "color_picker", "args": {"fav_color": "purple"}, "id": "foo", "type": "tool_call"}],
    )
    clean = validate_messages(
        to_specfuse_messages([HumanMessage("hi"), ai, ToolMessage("Great pick!", tool_call_id="foo")])
    )
    assert clean[1] == {
        "role": "assistant",
        "content": "Hmm let me think about that",
        "tool_calls": [{"id": "foo", "name": "color_picker", "arguments": {"fav_color": "purple"}}],
    }
    assert clean[2]["content"] == "Great pick!" and clean[2]["name"] == "color_picker"


def test_tool_message_error_status_and_list_content():
    ai = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1"}])
    failed = ToolMessage("missing argument b", tool_call_id="c1", status="error")
    listed = ToolMessage([{"type": "text", "text": "still "}, "missing"], tool_call_id="c1", status="error")
    said = ToolMessage("Error: bad", tool_call_id="c1", status="error")
    clean = validate_messages(to_specfuse_messages([HumanMessage("add"), ai, failed, listed, said]))
    assert [m["content"] for m in clean[2:]] == ["Error: missing argument b", "Error: still missing", "Error: bad"]


def test_invalid_calls_and_missing_ids():
    ai = AIMessage(
        "",
        tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": None}],
        invalid_tool_calls=[{"name": "add", "args": "{oops", "id": "bad", "error": "not JSON"}],
    )
    clean = validate_messages(to_specfuse_messages([HumanMessage("add"), ai]))
    assert clean[1]["tool_calls"] == [{"id": "call_1_0", "name": "add", "arguments": {"a": 1, "b": 2}}]


def test_function_message_and_unanswerable_tool_message_are_rejected():
    with pytest.raises(InvalidRequestError, match="FunctionMessage"):
        to_specfuse_messages([HumanMessage("hi"), FunctionMessage("5", name="add")])
    with pytest.raises(InvalidRequestError, match="matches no tool call"):
        SpecFuseChatModel(members=[MISSING]).invoke([HumanMessage("hi"), ToolMessage("5", tool_call_id="nope")])


# -- bindings ------------------------------------------------------------------------------------


def test_bind_tools_translates_to_openai_tools():
    bound = SpecFuseChatModel(members=[MISSING]).bind_tools(
        [add, Joke], tool_choice="add", parallel_tool_calls=False, strict=True, response_format=None
    )
    assert isinstance(bound, RunnableBinding)
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["add", "Joke"]
    assert bound.kwargs["tools"][0]["type"] == "function"
    assert bound.kwargs["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    assert (bound.kwargs["tool_choice"], bound.kwargs["parallel_tool_calls"], bound.kwargs["strict"]) == (
        "add",
        False,
        True,
    )


def test_bind_tools_response_format_from_a_schema_or_a_dict():
    model = SpecFuseChatModel(members=[MISSING])
    from_class = model.bind_tools([add], response_format=Joke).kwargs["response_format"]
    assert from_class == {
        "type": "json_schema",
        "json_schema": {"name": "Joke", "schema": convert_to_json_schema(Joke)},
    }
    given = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
    assert model.bind_tools([add], response_format=given).kwargs["response_format"] == given


BAD_TOOL_REQUESTS = {
    "unknown tool name": ({"tool_choice": "multiply"}, "'multiply', which is not among the tools"),
    "format and forced call": ({"tool_choice": "any", "response_format": Joke}, "forces a tool call"),
}


@pytest.mark.parametrize("case", list(BAD_TOOL_REQUESTS))
def test_bad_tool_requests_fail_before_any_model_loads(case):
    options, expected = BAD_TOOL_REQUESTS[case]
    bound = SpecFuseChatModel(members=[MISSING]).bind_tools([add], **options)
    with pytest.raises(InvalidRequestError, match=expected):
        bound.invoke("hi")
    with pytest.raises(InvalidRequestError, match=expected):
        list(bound.stream("hi"))


def test_profile_declares_tools_and_structured_output():
    profile = SpecFuseChatModel(members=[MISSING]).profile
    assert profile["tool_calling"] and profile["tool_choice"] and profile["tool_call_streaming"]
    assert profile["structured_output"] and not profile["image_inputs"]
    from langchain.agents.factory import _supports_provider_strategy

    assert _supports_provider_strategy(SpecFuseChatModel(members=[MISSING]))


def test_with_structured_output_rejects_unknown_arguments():
    model = SpecFuseChatModel(members=[MISSING])
    with pytest.raises(ValueError, match="unsupported arguments"):
        model.with_structured_output(Joke, tools=[])
    with pytest.raises(ValueError, match="unknown method 'xml'"):
        model.with_structured_output(Joke, method="xml")
    with pytest.raises(ValueError, match="needs a schema"):
        model.with_structured_output(None)


# -- results -------------------------------------------------------------------------------------


def test_invoke_returns_tool_calls_and_members_see_the_tools():
    model = model_writing(ANSWER)
    message = model.bind_tools([add, lookup], tool_choice="auto").invoke("what is 2 + 3?")
    assert message.content == "Let me add them."
    assert [(c["name"], c["args"], c["type"]) for c in message.tool_calls] == [("add", {"a": 2, "b": 3}, "tool_call")]
    assert message.tool_calls[0]["id"].startswith("call_")
    assert message.invalid_tool_calls == []
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert [b["type"] for b in message.content_blocks] == ["text", "tool_call"]
    session = model.get_ensemble().members[0].sessions[-1]
    assert [t["function"]["name"] for t in session.tools.tools] == ["add", "lookup"]
    assert session.tools.choice == "auto"


def test_stream_chunks_sum_to_the_invoked_message():
    model = model_writing(ANSWER).bind_tools([add])
    invoked = model.invoke("what is 2 + 3?")
    chunks = list(model.stream("what is 2 + 3?"))
    assert len(chunks) >= 3 and all(isinstance(c, AIMessageChunk) for c in chunks)
    pieces = [tc for c in chunks for tc in c.tool_call_chunks]
    assert pieces[0]["name"] == "add" and pieces[0]["id"] and pieces[0]["index"] == 0
    assert all(p["name"] is None and p["id"] is None for p in pieces[1:])  # name and id are sent once
    full = summed(chunks)
    assert full.content == invoked.content
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert full.tool_calls[0]["id"] == pieces[0]["id"]
    assert full.response_metadata["finish_reason"] == "tool_calls"


async def test_async_paths_match():
    model = model_writing(ANSWER).bind_tools([add])
    invoked = await model.ainvoke("what is 2 + 3?")
    chunks = [c async for c in model.astream("what is 2 + 3?")]
    full = summed(chunks)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert invoked.tool_calls[0]["args"] == {"a": 2, "b": 3}


def test_parallel_calls_stream_by_index():
    answer = call_text("add", {"a": 1, "b": 2}) + "\n" + call_text("lookup", {"city": "北京"})
    model = model_writing(answer).bind_tools([add, lookup])
    invoked = model.invoke("two things")
    assert [(c["name"], c["args"]) for c in invoked.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("lookup", {"city": "北京"}),
    ]
    full = summed(list(model.stream("two things")))
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("lookup", {"city": "北京"}),
    ]
    assert len({c["id"] for c in full.tool_calls}) == 2


def test_parallel_tool_calls_default_on_the_model_and_per_binding():
    model = model_writing(ANSWER, parallel_tool_calls=False)
    model.bind_tools([add]).invoke("what is 2 + 3?")
    assert model.get_ensemble().members[0].sessions[-1].tools.parallel is False
    model.bind_tools([add], parallel_tool_calls=True).invoke("what is 2 + 3?")
    assert model.get_ensemble().members[0].sessions[-1].tools.parallel is True
    model.invoke("hi")  # no tools: nothing to restrict
    assert not model.get_ensemble().members[0].sessions[-1].tools.tools


def test_budget_cut_inside_a_call_is_an_invalid_call_with_finish_length():
    model = model_writing(ANSWER, max_tokens=10).bind_tools([add])  # cut after {"a": 2,
    message = model.invoke("what is 2 + 3?")
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    assert message.response_metadata["finish_reason"] == "length"
    bad = message.invalid_tool_calls[0]
    assert bad["id"] and bad["error"] and bad["type"] == "invalid_tool_call"
    # Streamed, a call is sent only once it closes: LangChain's chunk merging parses partial JSON
    # leniently, so the pieces of a cut call would add up to a valid-looking call.
    full = summed(list(model.stream("what is 2 + 3?")))
    assert full.response_metadata["finish_reason"] == "length"
    assert full.tool_call_chunks == [] and full.tool_calls == [] and full.invalid_tool_calls == []


def test_plain_text_answers_are_unchanged_by_tools():
    model = model_writing("Hello there, friend.").bind_tools([add])
    message = model.invoke("hi")
    assert message.content == "Hello there, friend." and message.tool_calls == []
    assert message.response_metadata["finish_reason"] == "stop"
    assert summed(list(model.stream("hi"))).content == "Hello there, friend."


# -- structured output ---------------------------------------------------------------------------


class Options(BaseCallbackHandler):
    def __init__(self) -> None:
        self.options: list[dict[str, Any] | None] = []

    def on_chat_model_start(self, serialized, messages, *, options=None, **kwargs):
        self.options.append(options)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema", [Joke, JokeDict, Joke.model_json_schema()], ids=["pydantic", "typeddict", "json"])
def test_with_structured_output(method, schema):
    text = (
        json.dumps(JOKE)
        if method == "json_schema"
        else call_text("Joke" if schema is not JokeDict else "JokeDict", JOKE)
    )
    model = model_writing(text)
    chain = model.with_structured_output(schema, method=method)
    log = Options()
    result = chain.invoke("Tell me a joke about cats.", config={"callbacks": [log]})
    expected = Joke(**JOKE) if schema is Joke else JOKE
    assert result == expected
    assert log.options[0]["ls_structured_output_format"]["schema"] == convert_to_json_schema(schema)
    assert log.options[0]["ls_structured_output_format"]["kwargs"]["method"] == method
    streamed = list(chain.stream("Tell me a joke about cats."))
    assert streamed and streamed[-1] == expected
    if schema is Joke:
        assert all(isinstance(s, Joke) for s in streamed)  # only complete objects are yielded
    session = model.get_ensemble().members[0].sessions[-1]
    if method == "json_schema":
        assert session.tools.response_schema == convert_to_json_schema(schema)
    else:
        assert (session.tools.choice, session.tools.name, session.tools.parallel) == (
            "named",
            "Joke" if schema is not JokeDict else "JokeDict",
            False,
        )


def test_json_mode_and_include_raw():
    model = model_writing(json.dumps(JOKE))
    assert model.with_structured_output(None, method="json_mode").invoke("joke as JSON") == JOKE
    session = model.get_ensemble().members[0].sessions[-1]
    assert session.tools.response_schema == {} and not session.tools.tools  # any JSON object
    assert model.with_structured_output(Joke, method="json_mode").invoke("joke as JSON") == Joke(**JOKE)
    session = model.get_ensemble().members[0].sessions[-1]
    # the parser needs a Joke: with the schema at hand the grammar enforces it, as in json_schema
    assert session.tools.response_schema == convert_to_json_schema(Joke) and not session.tools.tools
    out = model.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert out["parsed"] == Joke(**JOKE) and out["parsing_error"] is None and isinstance(out["raw"], AIMessage)

    class Strict(BaseModel):
        setup: str
        punchline: str

        @field_validator("punchline")
        @classmethod
        def no_mice(cls, value: str) -> str:
            if "mouse" in value:
                raise ValueError("no mice")
            return value

    failed = model.with_structured_output(Strict, include_raw=True).invoke("joke")
    assert failed["parsed"] is None and "no mice" in str(failed["parsing_error"])
    assert json.loads(failed["raw"].content) == JOKE


# -- an agent loop, scripted -----------------------------------------------------------------------


def test_create_agent_runs_the_tool_loop():
    from langchain.agents import create_agent

    def script(messages: list[dict[str, Any]]) -> str:
        results = [m for m in messages if m["role"] == "tool"]
        if not results:
            return call_text("add", {"a": 2, "b": 3})
        return f"The sum is {results[-1]['content']}."

    agent = create_agent(model_writing(script), tools=[add], system_prompt="Use the tools.")
    state = agent.invoke({"messages": [HumanMessage("What is 2 + 3?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][2].content == "5"
    assert state["messages"][2].tool_call_id == state["messages"][1].tool_calls[0]["id"]
    assert state["messages"][-1].content == "The sum is 5."


def test_create_agent_uses_native_structured_output():
    from langchain.agents import create_agent

    model = model_writing(json.dumps(JOKE))
    agent = create_agent(model, tools=[], response_format=Joke)  # the profile makes it a ProviderStrategy
    state = agent.invoke({"messages": [HumanMessage("Tell me a joke.")]})
    assert state["structured_response"] == Joke(**JOKE)
    session = model.get_ensemble().members[0].sessions[-1]
    assert session.tools.response_schema["properties"].keys() == {"setup", "punchline"}
    assert not session.tools.tools  # no structured-output tool was added: the answer itself is the JSON


def test_a_repeated_call_is_never_made_twice():
    """A call with the same name and arguments as an earlier one is dropped, and the answer ends there;
    a different second call stays."""
    again = ANSWER + "\n" + call_text("add", {"a": 2, "b": 3}) + "\n" + call_text("add", {"a": 2, "b": 3})
    model = model_writing(again).bind_tools([add])
    message = model.invoke("what is 2 + 3?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert message.response_metadata["finish_reason"] == "tool_calls" and message.content == "Let me add them."
    streamed = summed(list(model.stream("what is 2 + 3?")))
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert streamed.content == "Let me add them."
    other = ANSWER + "\n" + call_text("add", {"a": 4, "b": 5})
    message = model_writing(other).bind_tools([add]).invoke("2 + 3 and 4 + 5?")
    assert [c["args"] for c in message.tool_calls] == [{"a": 2, "b": 3}, {"a": 4, "b": 5}]
