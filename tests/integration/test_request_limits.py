"""Requests that are well-formed but too big: a fast, typed 400 through every front door, before any
member works on them, and the server keeps serving (tiny random models, real server, real clients).

The shared tiny server runs with the library's default limits (max_tools 128, max_schema_bytes 64 KiB,
max_prompt_tokens 8192); the tiny models' context window is 2048 tokens.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from server_harness import TEST_KEY, server, tiny_specs  # noqa: F401 - fixtures
from specfuse_core import Ensemble, FusionConfig
from specfuse_core.errors import ContextLengthError, RequestLimitError

HI = [{"role": "user", "content": "Say hello."}]
WORDS = "one two three four five six seven eight nine ten "  # 30 tokens of the tiny tokenizers
LONG = [{"role": "user", "content": WORDS * 75}]  # about 2250 tokens: more than the 2048-token window
HUGE = [{"role": "user", "content": WORDS * 300}]  # about 9000 tokens: more than max_prompt_tokens
FAST = 10.0  # seconds: a 400 comes from counting and checking, not from model work


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for level in range(depth):
        schema = {"type": "object", "properties": {f"k{level}": schema}, "required": [f"k{level}"]}
    return schema


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def tools(count: int) -> list[dict[str, Any]]:
    parameters = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    return [{"type": "function", "function": {"name": f"tool_{i}", "parameters": parameters}} for i in range(count)]


ENUM_20000 = json_schema({"type": "object", "properties": {"x": {"enum": [f"value{i}" for i in range(20000)]}}})

TOO_BIG: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (body fields, the error's param, a phrase of its message)
    "an enum of 20,000 strings": ({"response_format": ENUM_20000}, "response_format", "max_schema_bytes"),
    "500 tools, one required": ({"tools": tools(500), "tool_choice": "required"}, "tools", "max_tools"),
    "a prompt over the context window": ({"messages": LONG}, "messages", "does not fit the context window"),
    "a prompt over max_prompt_tokens": ({"messages": HUGE}, "messages", "max_prompt_tokens"),
}

SMALL_BUT_ODD: dict[str, tuple[dict[str, Any], int]] = {
    # name: (body fields, the status): none is over a limit, so none may cost more than a normal request.
    # Nested 60 deep, the schema's instructions alone are about 3,700 tiny-model tokens: over the window.
    "a schema nested 60 objects deep": ({"response_format": json_schema(nested(60))}, 400),
    "a pattern with nested alternations": ({"response_format": json_schema({"type": "object", "properties": {"x": {
        "type": "string", "pattern": "((a|b|c)*(d|e)+(f|g|h)?){1,20}((ab|cd|ef)+|(gh|ij)*)*"}}, "required": ["x"]})},
        200),
    "an array with minItems 5000": ({"response_format": json_schema({"type": "object", "properties": {"x": {
        "type": "array", "items": {"type": "integer"}, "minItems": 5000}}, "required": ["x"]})}, 200),
}  # fmt: skip


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "specfuse", "messages": HI, "max_tokens": 8, **fields}


@pytest.fixture(scope="module")
def client(server):  # noqa: F811 - the fixture
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def sdk(server):  # noqa: F811
    return openai.OpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=120)


@pytest.mark.parametrize("name", TOO_BIG)
@pytest.mark.parametrize("stream", [False, True])
def test_too_big_gets_a_fast_400_over_raw_http(client, name, stream):
    fields, param, phrase = TOO_BIG[name]
    start = time.monotonic()
    response = client.post("/v1/chat/completions", json=body(stream=stream, **fields))
    elapsed = time.monotonic() - start
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == param and phrase in error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == ("context_length_exceeded" if "context window" in phrase else "request_too_large")
    assert elapsed < FAST, f"{name}: 400 after {elapsed:.1f} s"
    assert client.get("/health").status_code == 200
    assert client.post("/v1/chat/completions", json=body()).status_code == 200  # still serving


@pytest.mark.parametrize("name", TOO_BIG)
def test_too_big_gets_a_400_through_the_openai_client(sdk, name):
    fields, param, phrase = TOO_BIG[name]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(**body(**fields))
    assert caught.value.status_code == 400 and phrase in caught.value.message
    assert caught.value.code == ("context_length_exceeded" if "context window" in phrase else "request_too_large")


@pytest.mark.parametrize("name", SMALL_BUT_ODD)
def test_odd_but_small_schemas_are_answered_quickly(client, name):
    fields, status = SMALL_BUT_ODD[name]
    start = time.monotonic()
    response = client.post("/v1/chat/completions", json=body(**fields))
    assert response.status_code == status, response.text[:300]
    if status == 400:
        assert response.json()["error"]["code"] == "context_length_exceeded"
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert time.monotonic() - start < 30.0


# -- the adapters: a typed error before any member session opens ------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The members whose sessions opened."""
    from specfuse_core.hf_member import HFMember

    names: list[str] = []
    original = HFMember.open_session

    async def spy(self: HFMember, *args: Any, **kwargs: Any) -> Any:
        names.append(self.name)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(HFMember, "open_session", spy)
    return names


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_specs) -> Ensemble:  # noqa: F811
    # max_tokens 8: the tiny models write gibberish; these tests are about the checks, not the answers.
    return Ensemble.from_specs(tiny_specs, FusionConfig(temperature=0, max_tokens=8), share=True)


def test_langchain_raises_langchains_error_types(tiny_ensemble, opened):
    from langchain_core.exceptions import ContextOverflowError, ModelInvalidRequestError

    from specfuse_integrations.langchain import SpecFuseChatModel

    llm = SpecFuseChatModel(ensemble=tiny_ensemble)
    with pytest.raises(ContextOverflowError) as caught:
        llm.invoke(LONG[0]["content"])
    assert isinstance(caught.value, ContextLengthError) and "context window" in str(caught.value)
    with pytest.raises(ModelInvalidRequestError, match="max_tools"):
        llm.bind(tools=tools(500)).invoke("hi")
    with pytest.raises(RequestLimitError, match="max_schema_bytes"):
        list(llm.bind(response_format=ENUM_20000).stream("hi"))
    assert opened == []
    assert llm.invoke("hi").content is not None and len(opened) == 2  # a fitting request opens both


def test_llama_index_raises_value_errors_before_any_session(tiny_ensemble, opened):
    from llama_index.core.llms import ChatMessage

    from specfuse_integrations.llama_index import SpecFuseLLM

    llm = SpecFuseLLM(ensemble=tiny_ensemble)
    with pytest.raises(ContextLengthError, match="does not fit the context window"):
        llm.complete(LONG[0]["content"])
    with pytest.raises(RequestLimitError, match="max_tools"):
        llm.chat([ChatMessage(content="hi")], tools=tools(500), tool_choice="required")
    with pytest.raises(RequestLimitError, match="max_schema_bytes"):
        list(llm.stream_chat([ChatMessage(content="hi")], response_format=ENUM_20000))
    assert opened == []


def test_context_overflow_exit_answers_with_the_members_that_fit(tiny_specs, opened):  # noqa: F811
    from specfuse_core.hf_member import HFMember

    small, large = (HFMember(spec, context_window=w) for spec, w in zip(tiny_specs, (256, 2048)))
    ensemble = Ensemble([small, large], FusionConfig(temperature=0, max_tokens=8))
    question = [{"role": "user", "content": WORDS * 9}]
    prompt = small.prompt_ids(question)
    assert len(prompt) + 8 > 256  # the small member cannot hold it
    with pytest.raises(ContextLengthError) as caught:
        ensemble.generate(question)
    assert caught.value.overflows == ((small.name, len(prompt), 8, 256),) and opened == []
    result = ensemble.generate(question, context_overflow="exit")
    assert opened == [large.name] and [x.member for x in result.exits] == [small.name]
    assert result.output_tokens > 0


# -- a call cut by the budget, as the openai client accumulates a stream ----------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]}}, "required": ["city"],
    "additionalProperties": False}}}  # fmt: skip


def test_a_cut_call_is_no_call_in_the_openai_clients_merged_stream(sdk):
    from openai.lib.streaming.chat import ChatCompletionStreamState

    request = body(tools=[WEATHER], tool_choice="required", max_tokens=4)  # too few tokens to close the call
    state = ChatCompletionStreamState()  # the client's own accumulation of a stream's deltas
    for chunk in sdk.chat.completions.create(**request, stream=True):
        state.handle_chunk(chunk)
        assert not state.current_completion_snapshot.choices[0].message.tool_calls
    (choice,) = state.current_completion_snapshot.choices
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    whole = sdk.chat.completions.create(**body(tools=[WEATHER], tool_choice="required", max_tokens=80))
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.tool_calls  # it can call
