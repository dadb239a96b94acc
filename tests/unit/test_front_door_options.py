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
