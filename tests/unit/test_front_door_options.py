"""Every FusionConfig option reaches the engine through every front door.

The test walks ``fusion_options()`` (derived from FusionConfig's fields), so a new option that one
front door forgets fails here. Each door gets a value that differs from the default, and the
configuration the engine then runs with must hold it. The members are scripted: this checks the
translation of options, not model integration.
"""

from __future__ import annotations

from typing import Any

import pytest

from scripted import ScriptedMember
from specfuse_core import Ensemble, FusionConfig
from specfuse_core.config import FusionOption, fusion_options
from specfuse_integrations.cli import build_parser, config_from_args

OPTIONS = fusion_options()


def other_value(option: FusionOption) -> Any:
    """A valid value of ``option`` that is not its default."""
    if option.choices is not None:
        return next(c for c in option.choices if c != option.default)
    if option.kind is bool:
        return not option.default
    if option.kind is tuple:
        return ("END",)
    if option.kind is int:
        return (option.default or 0) + 2
    if option.kind is float:
        return 0.25 if option.default != 0.25 else 0.5
    raise AssertionError(f"no test value for {option.name} ({option.annotation})")


def test_every_option_has_a_test_value_and_help():
    for option in OPTIONS:
        FusionConfig(**{option.name: other_value(option)})  # valid on its own
        assert option.help, option.name


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[FusionConfig]:
    """The configurations of the requests the engine runs."""
    configs: list[FusionConfig] = []
    original = Ensemble._request

    def spy(self: Ensemble, messages: Any, overrides: dict[str, Any]) -> Any:
        request = original(self, messages, overrides)
        configs.append(request.config)
        return request

    monkeypatch.setattr(Ensemble, "_request", spy)
    return configs


def scripted_ensemble() -> Ensemble:
    members = [ScriptedMember("a", [("Hello there.", True)]), ScriptedMember("b", [("Hello there.", True)])]
    return Ensemble(members, FusionConfig())


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
@pytest.mark.parametrize("command", ["ask", "serve"])
def test_cli_flags(option: FusionOption, command: str) -> None:
    value = other_value(option)
    flag = "--" + option.name.replace("_", "-")
    if option.kind is bool:
        argv = [flag if value else "--no-" + flag[2:]]
    elif option.kind is tuple:
        argv = [x for item in value for x in (flag, item)]
    else:
        argv = [flag, str(value)]
    args = build_parser(eval_options=False).parse_args([command, *(["hi"] if command == "ask" else []), *argv])
    assert getattr(config_from_args(args), option.name) == value


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_langchain_fields_and_call_options(option: FusionOption, seen: list[FusionConfig]) -> None:
    pytest.importorskip("langchain_core")
    from specfuse_integrations.langchain import _FUSION_FIELDS, SpecFuseChatModel

    field = next(name for name, target in _FUSION_FIELDS.items() if target == option.name)
    value = other_value(option)
    given = list(value) if option.kind is tuple else value
    SpecFuseChatModel(ensemble=scripted_ensemble(), **{field: given}).invoke("hi")
    SpecFuseChatModel(ensemble=scripted_ensemble()).bind(**{field: given}).invoke("hi")
    assert [getattr(config, option.name) for config in seen] == [value, value]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_llama_index_options(option: FusionOption, seen: list[FusionConfig]) -> None:
    pytest.importorskip("llama_index.core")
    from specfuse_integrations.llama_index import SpecFuseLLM

    value = other_value(option)
    SpecFuseLLM(ensemble=scripted_ensemble(), **{option.name: value}).complete("hi")
    SpecFuseLLM(ensemble=scripted_ensemble()).complete("hi", **{option.name: value})
    assert [getattr(config, option.name) for config in seen] == [value, value]


def _server_request(body: dict[str, Any]) -> Any:
    from fastapi.testclient import TestClient

    from specfuse_integrations.server import create_app

    with TestClient(create_app(scripted_ensemble())) as client:
        return client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_server_request_options(option: FusionOption, seen: list[FusionConfig]) -> None:
    pytest.importorskip("fastapi")
    from specfuse_integrations.server.protocol import OPENAI_FUSION_OPTIONS

    value = other_value(option)
    body: dict[str, Any] = {"model": "specfuse", "messages": [{"role": "user", "content": "hi"}]}
    if option.name in OPENAI_FUSION_OPTIONS:
        body[option.name] = list(value) if option.kind is tuple else value
    else:
        body["specfuse"] = {option.name: value}
    response = _server_request(body)
    if not option.per_request:  # the operator's choice: `specfuse serve` flags (test_cli_flags)
        assert response.status_code == 400 and option.name in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    assert getattr(seen[-1], option.name) == value


# -- the request rules and the usage, the same through every door ---------------------------------


def _langchain(**bound: Any) -> Any:
    from specfuse_integrations.langchain import SpecFuseChatModel

    return SpecFuseChatModel(ensemble=scripted_ensemble()).bind(**bound)


def test_developer_role_is_the_system_role_in_every_door(seen: list[FusionConfig]) -> None:
    from langchain_core.messages import ChatMessage as LangChainMessage
    from llama_index.core.llms import ChatMessage as LlamaMessage
    from llama_index.core.llms import MessageRole

    from specfuse_integrations.llama_index import SpecFuseLLM

    assert _langchain().invoke([LangChainMessage(role="developer", content="Be brief."), ("user", "hi")]).content
    llm = SpecFuseLLM(ensemble=scripted_ensemble())
    assert llm.chat([LlamaMessage(role=MessageRole.DEVELOPER, content="Be brief."), LlamaMessage(content="hi")])
    body = {"model": "specfuse", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    assert _server_request(body).status_code == 200
    assert len(seen) == 3


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_no_tools_with_a_choice_that_forces_nothing_is_a_plain_answer_everywhere(choice: str) -> None:
    from llama_index.core.llms import ChatMessage as LlamaMessage

    from specfuse_integrations.llama_index import SpecFuseLLM

    assert _langchain(tools=[], tool_choice=choice).invoke("hi").content == "Hello there."
    llm = SpecFuseLLM(ensemble=scripted_ensemble())
    assert llm.chat([LlamaMessage(content="hi")], tools=[], tool_choice=choice).message.content == "Hello there."
    body = {"model": "specfuse", "messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": choice}
    response = _server_request(body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "Hello there."


def test_no_tools_with_a_forced_call_is_the_same_error_everywhere() -> None:
    from llama_index.core.llms import ChatMessage as LlamaMessage

    from specfuse_core import InvalidRequestError
    from specfuse_integrations.llama_index import SpecFuseLLM

    message = "tool_choice='required' needs tools, but the request has none"
    with pytest.raises(InvalidRequestError, match=message):
        _langchain(tools=[], tool_choice="required").invoke("hi")
    with pytest.raises(InvalidRequestError, match=message):
        SpecFuseLLM(ensemble=scripted_ensemble()).chat([LlamaMessage(content="hi")], tools=[], tool_choice="required")
    body = {"model": "specfuse", "messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": "required"}
    response = _server_request(body)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_usage_is_the_same_in_every_door() -> None:
    from llama_index.core.llms import ChatMessage as LlamaMessage

    from specfuse_integrations.llama_index import SpecFuseLLM

    expected = scripted_ensemble().generate([{"role": "user", "content": "hi"}]).token_usage.to_openai()
    assert expected["prompt_tokens"] > 0 and expected["completion_tokens"] > 0
    metadata = _langchain().invoke("hi").usage_metadata
    assert (metadata["input_tokens"], metadata["output_tokens"], metadata["total_tokens"]) == tuple(expected.values())
    extra = SpecFuseLLM(ensemble=scripted_ensemble()).chat([LlamaMessage(content="hi")]).additional_kwargs
    assert {k: extra[k] for k in expected} == expected
    streamed = list(SpecFuseLLM(ensemble=scripted_ensemble()).stream_chat([LlamaMessage(content="hi")]))
    assert {k: streamed[-1].additional_kwargs[k] for k in expected} == expected
    body = {"model": "specfuse", "messages": [{"role": "user", "content": "hi"}]}
    assert _server_request(body).json()["usage"] == expected


def test_the_last_event_carries_the_result() -> None:
    stream = scripted_ensemble().stream([{"role": "user", "content": "hi"}])
    events = list(stream)
    assert [e.result is not None for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].result is stream.result and events[-1].result.trace[-1].finish_reason == events[-1].finish_reason
    assert "result" not in events[-1].to_dict()
