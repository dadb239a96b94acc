"""SpecFuseLLM as a LlamaIndex FunctionCallingLLM: the conversions, over scripted members (no models).

What is tested here is translation only: LlamaIndex tools, ToolCallBlocks and tool results to the core
request, core results and streamed tool-call deltas back to ToolCallBlocks / ToolSelections, and that
FunctionAgent, predict_and_call and structured_predict run their loops on it. The calls themselves come
from scripted drafts, checked by the core's grammar; tests/integration/test_llama_index_real.py shows
the real models doing it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentOutput, AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from scripted import ScriptedMember, ScriptedSession
from specfuse_core import Ensemble, FusionConfig, InvalidRequestError
from specfuse_core.member import Draft
from specfuse_integrations.llama_index import SpecFuseLLM, to_specfuse_messages, to_specfuse_tools

def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly."""
    return a * b


CAPITALS = {"France": "Paris", "Japan": "Tokyo"}


def capital_of(country: str) -> str:
    """Look up the capital city of a country."""
    return CAPITALS.get(country, "unknown")


TOOLS = [FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(capital_of)]


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call in the canonical syntax, as a model would write it (test data, not parsing)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class TargetSession(ScriptedSession):
    """Drafts the rest of a target answer after whatever has been accepted (forced text included)."""

    def __init__(self, member: ScriptedMember, target: str) -> None:
        super().__init__(member)
        self.target = target

    async def draft(self, max_new_tokens: int, sampling: Any) -> Draft:
        self.draft_calls += 1
        rest = self.target[len(self.accepted) :] if self.target.startswith(self.accepted) else ""
        words = re.findall(r"\s*\S+\s*", rest)
        text = "".join(words[:max_new_tokens])
        ended = len(words) <= max_new_tokens
        self.usage.calls += 1
        return Draft(text=text, ended=ended, hit_budget=not ended, tokens=min(len(words), max_new_tokens))


@dataclass
class ConversationMember(ScriptedMember):
    """A scripted member that writes ``script(messages)``, the answer it wants for that request."""

    script: Callable[[list[dict[str, Any]]], str] = lambda messages: ""
    requests: list[list[dict[str, Any]]] = field(default_factory=list)
    tools_seen: list[Any] = field(default_factory=list)

    async def open_session(self, messages, *, cache: bool = True, seed: int | None = None, tools=None):
        self.requests.append(list(messages))
        self.tools_seen.append(tools)
        session = TargetSession(self, self.script(messages))
        self.sessions.append(session)
        return session


def make_llm(script: Callable[[list[dict[str, Any]]], str], **config: Any) -> SpecFuseLLM:
    """A drafter that writes what ``script`` says and a second member that only scores."""
    drafter = ConversationMember("a", [("", True)], script=script)
    scorer = ScriptedMember("b", [("", True)], role="score", prob=lambda *_: 0.4)
    return SpecFuseLLM(ensemble=Ensemble([drafter, scorer], FusionConfig(**{"segment_tokens": 64, **config})))


def drafter(llm: SpecFuseLLM) -> ConversationMember:
    return llm.ensemble.members[0]


# -- requests: tools, tool choice, history ------------------------------------------------------


def test_tools_become_openai_function_tools():
    (spec, _) = to_specfuse_tools(TOOLS)
    assert spec["type"] == "function"
    assert spec["function"]["name"] == "multiply"
    assert "Multiply two integers exactly." in spec["function"]["description"]
    assert spec["function"]["parameters"]["properties"].keys() == {"a", "b"}
    assert spec["function"]["parameters"]["required"] == ["a", "b"]
    raw = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    assert to_specfuse_tools([raw]) == [raw]
    assert to_specfuse_tools([]) is None and to_specfuse_tools(None) is None
    with pytest.raises(InvalidRequestError, match="tools\\[0\\]"):
        to_specfuse_tools([multiply])


@pytest.mark.parametrize(
    ("kwargs", "choice"),
    [
        ({}, "auto"),
        ({"tool_required": True}, "required"),
        ({"tool_required": True, "tool_choice": "auto"}, "required"),
        ({"tool_choice": "capital_of"}, "capital_of"),
        ({"tool_choice": "capital_of", "tool_required": True}, "capital_of"),
        ({"tool_choice": {"type": "function", "function": {"name": "multiply"}}}, {"type": "function", "function": {"name": "multiply"}}),
        ({"tool_choice": "none"}, "none"),
    ],
)
def test_prepare_chat_with_tools_honours_tool_required_and_tool_choice(kwargs, choice):
    llm = make_llm(lambda m: "")
    history = [ChatMessage(role="system", content="Be exact.")]
    prepared = llm._prepare_chat_with_tools(TOOLS, user_msg="What is 6 times 7?", chat_history=history, **kwargs)
    assert prepared["tool_choice"] == choice
    assert [t["function"]["name"] for t in prepared["tools"]] == ["multiply", "capital_of"]
    assert prepared["parallel_tool_calls"] is False
    assert [m.content for m in prepared["messages"]] == ["Be exact.", "What is 6 times 7?"]
    assert history == [ChatMessage(role="system", content="Be exact.")]  # the caller's list is not changed
    parallel = llm._prepare_chat_with_tools(TOOLS, user_msg=ChatMessage(role="user", content="Hi"), allow_parallel_tool_calls=True)
    assert parallel["parallel_tool_calls"] is True and parallel["messages"][-1].content == "Hi"


def test_the_request_reaches_the_core_with_tools_and_choice():
    llm = make_llm(lambda m: call_text("capital_of", {"country": "Japan"}))
    llm.chat_with_tools(TOOLS, user_msg="Capital of Japan?", tool_choice="capital_of")
    request = drafter(llm).tools_seen[-1]
    assert (request.choice, request.name, request.parallel) == ("named", "capital_of", False)
    assert [t["function"]["name"] for t in request.tools] == ["multiply", "capital_of"]
    llm.chat_with_tools(TOOLS, user_msg="Capital of Japan?", allow_parallel_tool_calls=True, tool_required=True)
    request = drafter(llm).tools_seen[-1]
    assert (request.choice, request.parallel) == ("required", True)
    llm.chat([ChatMessage(role="user", content="Hi")])
    assert not drafter(llm).tools_seen[-1].constrained  # a plain chat stays a plain chat


def test_history_with_tool_calls_and_results_is_translated():
    messages = [
        ChatMessage(role="user", content="6*7, and the capital of Japan?"),
        ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text="Let me check."),
                ToolCallBlock(tool_call_id="c1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7}),
                ToolCallBlock(tool_call_id="c2", tool_name="capital_of", tool_kwargs='{"country": "日本"}'),
            ],
        ),
        # FunctionAgent's shape: the tool output's blocks, the call id in additional_kwargs
        ChatMessage(role="tool", blocks=[TextBlock(text="42")], additional_kwargs={"tool_call_id": "c1"}),
        ChatMessage(role=MessageRole.TOOL, content="Tokyo", additional_kwargs={"tool_call_id": "c2"}),
        # another LLM's message (OpenAI-shaped calls in additional_kwargs, arguments as a JSON string)
        ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={"tool_calls": [{"id": "c3", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 1, "b": 2}'}}]},
        ),
        ChatMessage(role="tool", content="2", additional_kwargs={"tool_call_id": "c3"}),
        ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={"tool_calls": [ToolSelection(tool_id="c4", tool_name="capital_of", tool_kwargs={"country": "France"})]},
        ),
        ChatMessage(role="tool", content="Paris", additional_kwargs={"tool_call_id": "c4"}),
    ]
    assert to_specfuse_messages(messages) == [
        {"role": "user", "content": "6*7, and the capital of Japan?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "c1", "name": "multiply", "arguments": {"a": 6, "b": 7}},
                {"id": "c2", "name": "capital_of", "arguments": {"country": "日本"}},
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "multiply"},
        {"role": "tool", "content": "Tokyo", "tool_call_id": "c2", "name": "capital_of"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c3", "name": "multiply", "arguments": {"a": 1, "b": 2}}]},
        {"role": "tool", "content": "2", "tool_call_id": "c3", "name": "multiply"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c4", "name": "capital_of", "arguments": {"country": "France"}}]},
        {"role": "tool", "content": "Paris", "tool_call_id": "c4", "name": "capital_of"},
    ]


def test_bad_tool_requests_raise_typed_errors():
    llm = make_llm(lambda m: "Hi.")
    with pytest.raises(InvalidRequestError, match="nope"):
        llm.chat_with_tools(TOOLS, user_msg="Hi", tool_choice="nope")
    with pytest.raises(InvalidRequestError, match="needs tools"):
        llm.chat_with_tools([], user_msg="Hi", tool_required=True)
    with pytest.raises(InvalidRequestError, match="tool_call_id"):
        llm.chat([ChatMessage(role="user", content="Hi"), ChatMessage(role="tool", content="42")])
    assert llm.ensemble.open_sessions == 0


# -- responses: ToolCallBlocks, ToolSelections --------------------------------------------------


def test_chat_with_tools_returns_tool_call_blocks():
    llm = make_llm(lambda m: "Checking. " + call_text("capital_of", {"country": "Japan"}))
    response = llm.chat_with_tools(TOOLS, user_msg="What is the capital of Japan?")
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("capital_of", {"country": "Japan"})
    assert block.tool_call_id.startswith("call_")
    assert response.message.content == "Checking."  # text outside the call; no tag leaks
    assert response.additional_kwargs["finish_reason"] == "tool_calls"
    (openai_call,) = response.message.additional_kwargs["tool_calls"]
    assert openai_call["id"] == block.tool_call_id and openai_call["function"]["name"] == "capital_of"
    assert json.loads(openai_call["function"]["arguments"]) == {"country": "Japan"}
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection == ToolSelection(tool_id=block.tool_call_id, tool_name="capital_of", tool_kwargs={"country": "Japan"})
    # The response goes back into the history as the assistant turn, calls included.
    history = to_specfuse_messages([ChatMessage(role="user", content="Q"), response.message])
    assert history[1]["tool_calls"] == [{"id": block.tool_call_id, "name": "capital_of", "arguments": {"country": "Japan"}}]


def test_get_tool_calls_from_response_reads_additional_kwargs_and_reports_missing_calls():
    llm = make_llm(lambda m: "")
    openai_shaped = ChatResponse(
        message=ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={"tool_calls": [{"id": "x1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 2, "b": 3}'}}]},
        )
    )
    assert llm.get_tool_calls_from_response(openai_shaped) == [
        ToolSelection(tool_id="x1", tool_name="multiply", tool_kwargs={"a": 2, "b": 3})
    ]
    text_only = ChatResponse(
        message=ChatMessage(role="assistant", content="No idea."),
        additional_kwargs={
            "finish_reason": "length",
            "invalid_tool_calls": [{"id": "x2", "name": "multiply", "arguments": '{"a": 2', "error": "the call was cut off"}],
        },
    )
    assert llm.get_tool_calls_from_response(text_only, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="0 tool calls.*length.*multiply: the call was cut off"):
        llm.get_tool_calls_from_response(text_only)


def test_parallel_calls_and_trimming_to_one():
    two = call_text("multiply", {"a": 2, "b": 3}) + "\n" + call_text("capital_of", {"country": "France"})
    llm = make_llm(lambda m: two)
    response = llm.chat_with_tools(TOOLS, user_msg="Both, please.", allow_parallel_tool_calls=True)
    names = [c.tool_name for c in llm.get_tool_calls_from_response(response)]
    assert names == ["multiply", "capital_of"]
    trimmed = llm._validate_chat_with_tools_response(response, TOOLS, allow_parallel_tool_calls=False)
    assert [c.tool_name for c in llm.get_tool_calls_from_response(trimmed)] == ["multiply"]
    assert len(trimmed.message.additional_kwargs["tool_calls"]) == 1


def test_budget_cut_call_is_reported_not_executed():
    llm = make_llm(lambda m: '<tool_call>\n{"name": "multiply", "arguments": {"a": 123456, "b": 654321}}\n</tool_call>')
    response = llm.chat_with_tools(TOOLS, user_msg="Multiply.", max_tokens=4)
    assert response.additional_kwargs["finish_reason"] == "length"
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    (invalid,) = response.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "multiply"
    with pytest.raises(ValueError, match="finish_reason='length'"):
        llm.get_tool_calls_from_response(response)


STREAMED = "Let me compute. " + call_text("multiply", {"a": 1234, "b": 5678})
"""An answer drafted over several rounds (2 words per round), so that partial responses are seen."""


def check_partials(llm: SpecFuseLLM, chunks: list[ChatResponse]) -> None:
    assert len(chunks) >= 4
    # content only, never a piece of a tag; the deltas add up to the final content
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content == "Let me compute."
    assert all("<" not in (c.message.content or "") for c in chunks)
    seen = []
    for chunk in chunks:  # what FunctionAgent does with every partial response
        seen.append(llm.get_tool_calls_from_response(chunk, error_on_no_tool_call=False))
    # A call appears only once it is closed, and then whole: a budget-cut call can never look valid.
    assert seen[0] == [] and seen[-2] == []
    (final,) = llm.get_tool_calls_from_response(chunks[-1])
    assert final.tool_name == "multiply" and final.tool_kwargs == {"a": 1234, "b": 5678}
    assert all(s == [] or [(c.tool_id, c.tool_kwargs) for c in s] == [(final.tool_id, final.tool_kwargs)] for s in seen)
    assert chunks[-1].additional_kwargs["finish_reason"] == "tool_calls"
    assert chunks[-1].message.content == "Let me compute."


def test_streamed_tool_calls_sync():
    llm = make_llm(lambda m: STREAMED, segment_tokens=2)
    check_partials(llm, list(llm.stream_chat_with_tools(TOOLS, user_msg="1234 times 5678?")))


async def test_streamed_tool_calls_async():
    llm = make_llm(lambda m: STREAMED, segment_tokens=2)
    stream = await llm.astream_chat_with_tools(TOOLS, user_msg="1234 times 5678?")
    check_partials(llm, [c async for c in stream])


# -- the framework's own loops on top -----------------------------------------------------------


def agent_script(messages: list[dict[str, Any]]) -> str:
    """Call multiply, then capital_of, then answer from the two tool results the agent sent back."""
    results = [m for m in messages if m["role"] == "tool"]
    if not results:
        return call_text("multiply", {"a": 1234, "b": 5678})
    if len(results) == 1:
        return call_text("capital_of", {"country": "Japan"})
    return f"The product is {results[0]['content']} and the capital is {results[1]['content']}."


@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_runs_its_loop(streaming):
    llm = make_llm(agent_script)
    agent = FunctionAgent(tools=TOOLS, llm=llm, system_prompt="Use the tools.", streaming=streaming)
    handler = agent.run(user_msg="What is 1234 times 5678, and what is the capital of Japan?")
    events = [event async for event in handler.stream_events()]
    output = await handler
    assert isinstance(output, AgentOutput)
    results = [e for e in events if isinstance(e, ToolCallResult)]
    assert [(r.tool_name, r.tool_kwargs, str(r.tool_output)) for r in results] == [
        ("multiply", {"a": 1234, "b": 5678}, "7006652"),
        ("capital_of", {"country": "Japan"}, "Tokyo"),
    ]
    assert output.response.content == "The product is 7006652 and the capital is Tokyo."
    if streaming:
        assert any(isinstance(e, AgentStream) for e in events)
    # The third request held both calls and both results, each result answering its own call id.
    last = drafter(llm).requests[-1]
    calls = [c for m in last if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answers = {m["tool_call_id"]: m["content"] for m in last if m["role"] == "tool"}
    assert {c["name"]: answers[c["id"]] for c in calls} == {"multiply": "7006652", "capital_of": "Tokyo"}


def test_predict_and_call_runs_the_tool():
    llm = make_llm(lambda m: call_text("multiply", {"a": 21, "b": 2}))
    response = llm.predict_and_call(TOOLS, user_msg="21 times 2?")
    assert response.response == "42"
    assert response.sources[0].tool_name == "multiply"


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


def test_structured_predict_and_structured_llm_return_validated_models():
    llm = make_llm(lambda m: call_text("Person", {"name": "Ada", "age": 36}))
    prompt = PromptTemplate("Extract the person: {text}")
    person = llm.structured_predict(Person, prompt, text="Ada is 36.")
    assert person == Person(name="Ada", age=36)
    request = drafter(llm).tools_seen[-1]
    assert (request.choice, request.parallel) == ("required", False)  # tool_required from the program
    assert asyncio.run(llm.astructured_predict(Person, prompt, text="Ada is 36.")) == person

    structured = llm.as_structured_llm(Person)
    response = structured.chat([ChatMessage(role="user", content="Ada is 36.")])
    assert response.raw == person
    assert json.loads(response.message.content) == {"name": "Ada", "age": 36}


def test_structured_predict_rejects_what_the_grammar_cannot_accept():
    # A call whose arguments break the schema never reaches the program: the grammar cuts the draft.
    llm = make_llm(lambda m: call_text("Person", {"name": "Ada", "age": "thirty-six"}), max_tokens=40)
    with pytest.raises(ValueError):
        llm.structured_predict(Person, PromptTemplate("Extract the person: {text}"), text="Ada is 36.")


def test_budget_cut_call_never_looks_like_a_call_while_streaming():
    """Every partial response of a stream whose call the budget cuts: no call, by LlamaIndex's own reading."""
    llm = make_llm(lambda m: STREAMED, segment_tokens=2)
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="1234 times 5678?", max_tokens=8))
    assert len(chunks) >= 3 and chunks[-1].additional_kwargs["finish_reason"] == "length"
    for chunk in chunks:
        assert llm.get_tool_calls_from_response(chunk, error_on_no_tool_call=False) == []
        assert not [b for b in chunk.message.blocks if isinstance(b, ToolCallBlock)]
    with pytest.raises(ValueError, match="finish_reason='length'.*multiply"):
        llm.get_tool_calls_from_response(chunks[-1])


def test_a_repeated_call_is_dropped_and_the_answer_ends():
    repeated = "\n".join([call_text("multiply", {"a": 2, "b": 3})] * 3 + [call_text("capital_of", {"country": "France"})])
    llm = make_llm(lambda m: repeated, segment_tokens=4)
    response = llm.chat_with_tools(TOOLS, user_msg="2 times 3?", allow_parallel_tool_calls=True)
    calls = llm.get_tool_calls_from_response(response)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("multiply", {"a": 2, "b": 3})]
    assert response.additional_kwargs["finish_reason"] == "tool_calls"
    notes = [n for event in response.raw["trace"] for n in event["notes"]]
    assert any("repeated the call multiply" in n for n in notes)
