"""Remote members against real llama-cpp-python servers serving the SmolLM2 GGUF (offline, slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from remote_failures import answer_while_stopping, assert_exited_once

from specfuse_core import Ensemble, FusionConfig, HFMember
from specfuse_core.presets import PRESETS, fetch_gguf
from specfuse_core.remote import OpenAICompatibleMember
from specfuse_eval.engine_servers import llama_cpp_server

pytestmark = [pytest.mark.slow, pytest.mark.llama_cpp]  # tests/conftest.py skips (or fails) without llama_cpp.server

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf() -> Path:
    return fetch_gguf(PRESETS["smollm2-135m-instruct"])


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    srv = llama_cpp_server(gguf, tmp_path_factory.mktemp("llama") / "server-a.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def second_server(gguf, tmp_path_factory):
    srv = llama_cpp_server(gguf, tmp_path_factory.mktemp("llama") / "server-b.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def smol_local() -> HFMember:
    # float32: the server computes in float32 on the same (dequantized) weights; bf16 would add its
    # own rounding to the comparison (auto is bf16 on some CPUs)
    return HFMember("smollm2-135m-instruct", name="smol-local", dtype="float32")


def test_scoring_agrees_with_local_transformers(server, smol_local):
    import asyncio

    remote = OpenAICompatibleMember(server.url, tokenizer=smol_local.tokenizer, name="smol-remote")
    candidates = [("The capital of France is Paris.", True), ("Paris", False), (" Lyon is", False)]

    async def both():
        local_session = await smol_local.open_session(FRANCE)
        remote_session = await remote.open_session(FRANCE)
        local = await local_session.score(candidates)
        far = await remote_session.score(candidates)
        await remote.aclose()
        return local, far, remote_session

    local, far, session = asyncio.run(both())
    assert remote.dialect == "llama_cpp" and remote.model
    assert session.requests == len(candidates)  # llama-cpp-python takes one prompt per request
    for (text, _), x, y in zip(candidates, local, far):
        assert len(x.logprobs) == len(y.logprobs) > 0, text
        per_token = sum(abs(a - b) for a, b in zip(x.logprobs, y.logprobs)) / len(x.logprobs)
        assert per_token <= 0.35, (text, list(x.logprobs), list(y.logprobs))
    # the candidates really differ (so agreement is not trivially about equal numbers)
    mean = [sum(s.logprobs) / len(s.logprobs) for s in far]
    assert mean[0] > mean[2] + 1.0


def test_remote_smollm2_plus_local_qwen_answers_paris(server):
    ens = Ensemble.from_specs([server.url + "#smol", "qwen2.5-coder-0.5b-instruct"])
    remote, qwen = ens.members
    assert isinstance(remote, OpenAICompatibleMember) and isinstance(qwen, HFMember)
    result = ens.generate(FRANCE, temperature=0, max_tokens=16, segment_tokens=8)
    assert "Paris" in result.text, result.text
    assert not result.exits
    assert result.usage[remote.name].calls > 0 and result.usage[remote.name].generated_tokens > 0
    assert any(c.member == remote.name and c.kind == "draft" for e in result.trace for c in e.calls)


def test_two_remote_members_answer_paris(server, second_server):
    ens = Ensemble.from_specs([server.url, second_server.url], FusionConfig(temperature=0, max_tokens=16, segment_tokens=8))
    assert len({m.name for m in ens.members}) == 2
    result = ens.generate(FRANCE)
    assert "Paris" in result.text, result.text
    assert not result.exits


def test_killing_a_server_mid_request_leaves_the_other_member(server, second_server):
    first = OpenAICompatibleMember(server.url, name="alive")
    victim = OpenAICompatibleMember(second_server.url, name="victim", max_retries=1, backoff=0.2, timeout=30)
    ens = Ensemble([first, victim], FusionConfig(temperature=0, max_tokens=14, segment_tokens=4))
    events, result = answer_while_stopping(ens, second_server.stop, 0.3)
    assert "victim" in events[0].active
    assert not second_server.running
    assert_exited_once(result, "victim")
    assert any(x.member == "victim" for e in events for x in e.exits)
    assert result.rounds >= 2 and result.text.strip()
    assert events[-1].active == ("alive",)
