"""OpenAICompatibleMember against httpx.MockTransport: retries, errors, parsing, secrets (no server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from specfuse_core import Ensemble, FusionConfig
from specfuse_core.errors import ConfigError, NoActiveMembersError
from specfuse_core.member import SamplingParams
from specfuse_core.registry import load_member, parse_spec
from specfuse_core.remote import (
    OpenAICompatibleMember,
    RemoteAuthError,
    RemoteError,
    RemoteProtocolError,
    _candidate_scores,
)

KEY = "sk-test-SECRET-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
GREEDY = SamplingParams(0.0, 1.0, None)
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]}


def completion(text="Hello there", finish="length", tokens=("Hello", " there"), logprobs=(-0.5, -1.0)):
    return {
        "choices": [
            {
                "index": 0,
                "text": text,
                "finish_reason": finish,
                "logprobs": {"tokens": list(tokens), "token_logprobs": list(logprobs), "text_offset": [0] * len(tokens)},
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens)},
    }


def member(handler, **kwargs) -> OpenAICompatibleMember:
    options = dict(model="m", dialect="llama_cpp", api_key=KEY, max_retries=2, backoff=0.0, timeout=2.0)
    options.update(kwargs)
    return OpenAICompatibleMember("http://example.test/v1", transport=httpx.MockTransport(handler), **options)


def route(responses):
    """A handler that serves /v1/models and pops ``responses`` (callables or (status, body)) for the rest."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if request.url.path.startswith("/extras/"):
            return httpx.Response(200, json={"tokens": list(range(20))})
        if request.url.path in ("/tokenize", "/detokenize"):
            return httpx.Response(404, json={"detail": "Not Found"})
        item = responses.pop(0) if len(responses) > 1 else responses[0]
        if callable(item):
            return item(request)
        status, body = item
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def assert_no_key(*texts):
    for text in texts:
        assert KEY not in str(text)


async def test_429_then_success_retries_and_sends_the_key_only_in_the_header():
    handler = route([(429, {"error": "slow down"}), (200, completion())])
    m = member(handler)
    session = await m.open_session(MESSAGES)
    draft = await session.draft(2, GREEDY)
    assert draft.text == "Hello there" and draft.hit_budget and not draft.ended
    posts = [r for r in handler.seen if r.url.path == "/v1/completions"]
    assert len(posts) == 2
    assert posts[-1].headers["authorization"] == f"Bearer {KEY}"
    assert all(KEY not in r.content.decode() for r in handler.seen)
    assert json.loads(posts[-1].content)["max_tokens"] == 2


async def test_500_until_retries_run_out():
    handler = route([(500, "upstream exploded")])
    m = member(handler, max_retries=2)
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteError, match=r"HTTP 500 after 3 attempt") as info:
        await session.draft(2, GREEDY)
    assert len([r for r in handler.seen if r.url.path == "/v1/completions"]) == 3
    assert "upstream exploded" in str(info.value)
    assert_no_key(info.value, repr(m))


async def test_malformed_json():
    m = member(route([(200, "{not json")]))
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteProtocolError, match="malformed JSON"):
        await session.draft(2, GREEDY)


async def test_missing_logprobs_in_a_scoring_reply():
    body = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}], "usage": {"completion_tokens": 1}}
    m = member(route([(200, body)]))
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteProtocolError, match="no logprobs"):
        await session.score([("Hello", False)])


async def test_timeout_gives_a_clear_error():
    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    handler = route([slow])
    m = member(handler, max_retries=1)
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteError, match=r"timed out after 2s \(2 attempt") as info:
        await session.draft(2, GREEDY)
    assert_no_key(info.value)


async def test_wrong_auth_is_not_retried_and_the_key_is_not_shown():
    handler = route([(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})])
    m = member(handler)
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteAuthError, match="rejected the credentials") as info:
        await session.draft(2, GREEDY)
    assert len([r for r in handler.seen if r.url.path == "/v1/completions"]) == 1  # no retry
    assert_no_key(info.value, repr(m))


def test_wrong_auth_through_the_engine_is_an_exit_without_the_key(monkeypatch):
    monkeypatch.setenv("SPECFUSE_API_KEY", KEY)

    def handler(request):
        return httpx.Response(401, json={"error": f"bad key {request.headers.get('authorization')}"})

    m = OpenAICompatibleMember("http://example.test/v1", model="m", dialect="llama_cpp", transport=httpx.MockTransport(handler))
    assert "set" in repr(m) and KEY not in repr(m)
    ens = Ensemble([m], FusionConfig(temperature=0, max_tokens=4))
    with pytest.raises(NoActiveMembersError) as info:
        ens.generate(MESSAGES)
    message = str(info.value)
    assert "RemoteAuthError" in message and m.name in message
    assert_no_key(message)


async def test_error_bodies_that_echo_the_key_are_redacted():
    m = member(route([(400, {"error": f"what is {KEY}?"})]))
    session = await m.open_session(MESSAGES)
    with pytest.raises(RemoteError, match="HTTP 400") as info:
        await session.draft(2, GREEDY)
    assert "***" in str(info.value)
    assert_no_key(info.value)


async def test_scoring_maps_candidates_from_the_end_and_reuses_the_own_draft():
    def echo(request):
        body = json.loads(request.content)
        assert body["echo"] is True and body["max_tokens"] == 1 and body["logprobs"] == 1
        # prompt tokens (the BOS dropped), then the candidate " Paris" + end token "", then one generated token
        tokens = ["user", "\n", "hi", "", "\n", "assistant", "\n", " Par", "is", "", "\n"]
        values = [None, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -0.25, -0.5, -0.75, -9.0]
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "text": "", "logprobs": {"tokens": tokens, "token_logprobs": values}}],
                "usage": {"completion_tokens": 1},
            },
        )

    handler = route([(200, completion()), echo])
    m = member(handler)
    session = await m.open_session(MESSAGES)
    await session.draft(2, GREEDY)
    scores = await session.score([("Hello there", False), (" Paris", True), ("Hello", False)])
    assert list(scores[0].logprobs) == [-0.5, -1.0]  # its own draft: no request
    assert list(scores[1].logprobs) == [-0.25, -0.5, -0.75]
    assert list(scores[2].logprobs) == [-0.5]  # a token-aligned prefix of its own draft
    assert session.requests == 2  # one draft + one scoring request (one candidate to score)
    sent = [json.loads(r.content) for r in handler.seen if r.url.path == "/v1/completions"]
    assert sent[-1]["prompt"].endswith("assistant\n Paris<|im_end|>")


async def test_a_vllm_draft_that_stops_on_the_end_token_reuses_its_own_scores():
    # vLLM lists the end-of-sequence token that stopped a draft in logprobs.tokens; its text leaves it out
    draft = completion(text="Paris.", finish="stop", tokens=("Paris", ".", "<|im_end|>"), logprobs=(-0.5, -0.25, -0.125))
    handler = route([(200, draft)])
    m = member(handler, dialect="vllm", tokenizer=None)
    session = await m.open_session(MESSAGES)
    result = await session.draft(8, GREEDY)
    assert result.text == "Paris." and result.ended
    scores = await session.score([("Paris.", True), ("Paris", False)])
    assert list(scores[0].logprobs) == [-0.5, -0.25, -0.125]  # the draft and the end token it stopped on
    assert list(scores[1].logprobs) == [-0.5]
    assert session.requests == 1  # the draft only: nothing left to score


async def test_vllm_dialect_scores_all_candidates_in_one_request():
    def echo(request):
        body = json.loads(request.content)
        assert isinstance(body["prompt"], list) and len(body["prompt"]) == 2
        choices = []
        for index, prompt in reversed(list(enumerate(body["prompt"]))):
            tail = prompt.split("assistant\n")[-1]
            tokens = ["<|im_start|>", "assistant", "\n"] + list(tail) + ["!"]
            values = [None, -1.0, -1.0] + [-0.1 * (index + 1)] * len(tail) + [-5.0]
            choices.append({"index": index, "text": prompt, "logprobs": {"tokens": tokens, "token_logprobs": values}})
        return httpx.Response(200, json={"choices": choices})

    handler = route([echo])
    m = member(handler, dialect="vllm", tokenizer=None)
    session = await m.open_session(MESSAGES)
    scores = await session.score([("ab", False), ("xyz", True)])
    assert [round(x, 3) for x in scores[0].logprobs] == [-0.1, -0.1]
    assert [round(x, 3) for x in scores[1].logprobs] == [-0.2] * 4  # "x", "y", "z" and "<|im_end|>"
    assert session.requests == 1


def test_the_dialect_comes_from_the_servers_model_owner():
    from specfuse_core.remote import _detect_dialect

    root = "http://127.0.0.1:8000"
    assert _detect_dialect({"owned_by": "vllm"}, root) == "vllm"
    assert _detect_dialect({"owned_by": "sglang"}, root) == "sglang"
    assert _detect_dialect({"owned_by": "me"}, root) == "llama_cpp"  # llama-cpp-python
    assert _detect_dialect({"owned_by": "llamacpp"}, root) == "openai"  # llama.cpp's llama-server: draft-only
    assert _detect_dialect({"owned_by": "system"}, "https://api.openai.com") == "openai"
    assert _detect_dialect({"owned_by": "someone"}, root) == "vllm"


def test_candidate_span_includes_a_token_straddling_the_accepted_text():
    choice = {"logprobs": {"tokens": ["a", "Hel", "lo", " w", "x"], "token_logprobs": [None, -1.0, -2.0, -3.0, -9.0]}}
    # accepted "...Hel" + candidate "lo w": the tokens "lo", " w" cover it exactly
    assert list(_candidate_scores(choice, "lo w", False, 1, "m").logprobs) == [-2.0, -3.0]
    # candidate "o w": " w" covers 2 chars, then "lo" straddles the boundary and is included
    assert list(_candidate_scores(choice, "o w", False, 1, "m").logprobs) == [-2.0, -3.0]


async def test_auto_dialect_and_model_from_v1_models():
    m = OpenAICompatibleMember(
        "http://example.test/v1", transport=httpx.MockTransport(route([(200, completion())])), backoff=0.0
    )
    assert m.model is None
    await m.open_session(MESSAGES)
    assert m.model == "m" and m.dialect == "llama_cpp" and m.can_score


async def test_openai_dialect_is_draft_only_and_drafts_through_chat():
    def chat(request):
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        assert body["logprobs"] is True and body["messages"][-1]["content"]
        return httpx.Response(
            200, json={"choices": [{"index": 0, "message": {"content": "Paris."}, "finish_reason": "stop"}]}
        )

    m = member(route([chat]), dialect="openai")
    assert not m.can_score and m.can_draft
    session = await m.open_session(MESSAGES)
    draft = await session.draft(4, GREEDY)
    assert draft.text == "Paris." and draft.ended
    assert any("draft-only" in note for note in m.notes) and m.role == "draft"
    with pytest.raises(RemoteError, match="draft-only"):
        await session.score([("x", False)])


async def test_cancelling_cancels_the_in_flight_request():
    started = asyncio.Event()
    cancelled = []

    class Hanging(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            if request.url.path == "/v1/models" or request.url.path.startswith("/extras"):
                return httpx.Response(200, json=MODELS if request.url.path == "/v1/models" else {"tokens": [1]})
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(request.url.path)
                raise
            return httpx.Response(200, json=completion())

    m = OpenAICompatibleMember("http://example.test/v1", model="m", dialect="llama_cpp", transport=Hanging())
    ens = Ensemble([m], FusionConfig(temperature=0, max_tokens=4))
    task = asyncio.create_task(ens.agenerate(MESSAGES))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == ["/v1/completions"]


def test_specs(monkeypatch):
    assert parse_spec("http://h:1/v1#my-model::score") == ("http://h:1/v1#my-model", "score")
    assert parse_spec("http://[::1]:8000/v1") == ("http://[::1]:8000/v1", "both")
    with pytest.raises(ConfigError):
        parse_spec("http://h:1/v1::judge")
    m = load_member("http://h:1/v1#my-model::draft", share=False, device="cpu", timeout=3.0)
    assert isinstance(m, OpenAICompatibleMember)
    assert (m.model, m.role, m.base_url, m.timeout) == ("my-model", "draft", "http://h:1/v1", 3.0)
    with pytest.raises(ConfigError, match="dialect"):
        OpenAICompatibleMember("http://h:1/v1", dialect="tgi")
