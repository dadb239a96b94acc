"""`specfuse serve` over real HTTP on 127.0.0.1 with two tiny random models: the OpenAI wire format,
one SSE chunk per segment, the summary the adapters report, errors, auth, metrics, 503 and 429."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from server_harness import (
    TEST_KEY,
    ServerProcess,
    chat_body,
    free_port,
    segment_chunks,
    sse_payloads,
    stream_chat,
    streamed_text,
)
from server_harness import server, tiny_specs  # noqa: F401 - fixtures
from specfuse_core import Ensemble, FusionConfig

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]}}, "required": ["city"],
    "additionalProperties": False}}}  # fmt: skip


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=120) as c:
        yield c


def post(client, server, body, **kwargs):
    return client.post(server.url + "/v1/chat/completions", json=body, headers=server.headers, **kwargs)


def test_health_models_and_self_contained_page(server, client):
    assert client.get(server.url + "/health").json()["status"] == "ok"
    models = client.get(server.url + "/v1/models", headers=server.headers).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["specfuse"]
    assert models["data"][0]["members"] == ["tiny-a", "tiny-b"]
    assert client.get(server.url + "/v1/models/specfuse", headers=server.headers).json()["id"] == "specfuse"
    assert client.get(server.url + "/v1/models/gpt-4o", headers=server.headers).status_code == 404
    page = client.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" in html and "/v1/chat/completions" in html
    for external in ("src=", "href=", "@import", "http://", "https://", "//cdn"):
        assert external not in html, f"the page must be self-contained, found {external!r}"


def test_non_streaming_carries_the_adapters_summary(server, client, tiny_specs):
    from langchain_core.messages import HumanMessage

    from specfuse_integrations.langchain import SpecFuseChatModel

    response = post(client, server, chat_body(seed=0))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "chat.completion" and payload["model"] == "specfuse"
    assert payload["id"].startswith("chatcmpl-")
    (choice,) = payload["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = payload["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # The same request in-process through the LangChain adapter: same text, same summary.
    llm = SpecFuseChatModel(members=tiny_specs, temperature=0, segment_tokens=4, max_tokens=24)
    message = llm.invoke([HumanMessage("Where is Paris?")])
    assert choice["message"]["content"] == message.content
    assert payload["specfuse"] == json.loads(json.dumps(message.response_metadata["specfuse"]))
    assert payload["specfuse"]["rounds"] >= 2 and set(payload["specfuse"]["wins"]) == {"tiny-a", "tiny-b"}
    assert usage["completion_tokens"] == message.usage_metadata["output_tokens"]


def test_streaming_sends_one_chunk_per_segment(server, client):
    whole = post(client, server, chat_body()).json()
    payloads = stream_chat(client, server.url, chat_body(stream_options={"include_usage": True}), server.headers)
    assert payloads[-1] == "[DONE]"
    segments = segment_chunks(payloads)
    summary = whole["specfuse"]
    assert len(segments) == summary["rounds"]
    assert streamed_text(payloads) == whole["choices"][0]["message"]["content"]
    assert segments[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in segments[1:])
    ids = {c["id"] for c in segments}
    assert len(ids) == 1 and all(c["object"] == "chat.completion.chunk" for c in segments)
    for number, chunk in enumerate(segments, start=1):
        info = chunk["specfuse"]
        assert info["round"] == number
        assert info["text"] == chunk["choices"][0]["delta"]["content"]
        assert info["winners"] and set(info["winners"]) <= {"tiny-a", "tiny-b"}
        assert len(info["scores"]) == len(info["scorers"])
        assert all(len(row) == len(info["candidates"]) for row in info["scores"])
        assert len(info["totals"]) == len(info["candidates"])
        assert isinstance(info["exits"], list)
        last = number == len(segments)
        assert (chunk["choices"][0]["finish_reason"] is not None) == last
    assert segments[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert segments[-1]["specfuse"]["summary"] == summary
    usage_chunk = payloads[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    # Without include_usage there is no usage chunk.
    plain = stream_chat(client, server.url, chat_body(), server.headers)
    assert len(segment_chunks(plain)) == len(plain) - 1 and "usage" not in plain[-2]


def test_fusion_options_and_stop_are_passed_through(server, client):
    short = post(client, server, chat_body(max_tokens=12, specfuse={"segment_tokens": 1})).json()
    default = post(client, server, chat_body(max_tokens=12)).json()  # the server's --segment-tokens 4
    assert short["usage"]["completion_tokens"] <= 12 and default["usage"]["completion_tokens"] <= 12
    assert short["specfuse"]["rounds"] > default["specfuse"]["rounds"]
    text = post(client, server, chat_body()).json()["choices"][0]["message"]["content"]
    stop = text.strip()[2:5]
    assert stop, text
    cut = post(client, server, chat_body(stop=[stop])).json()
    assert stop not in cut["choices"][0]["message"]["content"] and cut["choices"][0]["finish_reason"] == "stop"


def _too_deep() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


BAD_REQUESTS: list[tuple] = [
    # name, raw body, status, param, code
    ("bad JSON", b'{"model": "specfuse", "messages": [', 400, None, "invalid_json"),
    ("invalid UTF-8", b'{"model": "specfuse", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None,
     "invalid_encoding"),
    ("lone surrogate", b'{"model": "specfuse", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None,
     "invalid_encoding"),
    ("NaN", b'{"model": "specfuse", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}', 400, None,
     "invalid_json"),
    ("nested too deeply", _too_deep(), 400, None, "invalid_json"),
    ("not an object", b"[1, 2, 3]", 400, None, "invalid_json"),
    ("empty messages", json.dumps({"model": "specfuse", "messages": []}).encode(), 400, "messages", None),
    ("no messages", json.dumps({"model": "specfuse"}).encode(), 400, "messages", None),
    ("no model", json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model", None),
    ("unknown role", json.dumps(chat_body() | {"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
     "messages", None),
    ("non-text content", json.dumps(chat_body() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}).encode(), 400, "messages", None),
    ("content is a number", json.dumps(chat_body() | {"messages": [{"role": "user", "content": 7}]}).encode(), 400,
     "messages", None),
    ("n=2", json.dumps(chat_body(n=2)).encode(), 400, "n", None),
    ("huge max_tokens", json.dumps(chat_body(max_tokens=10**12)).encode(), 400, "max_tokens", "context_length_exceeded"),
    ("zero max_tokens", json.dumps(chat_body(max_tokens=0)).encode(), 400, "max_tokens", None),
    ("negative temperature", json.dumps(chat_body(temperature=-1)).encode(), 400, "temperature", None),
    ("temperature is text", json.dumps(chat_body(temperature="hot")).encode(), 400, "temperature", None),
    ("top_p above 1", json.dumps(chat_body(top_p=1.5)).encode(), 400, "top_p", None),
    ("five stops", json.dumps(chat_body(stop=list("abcde"))).encode(), 400, "stop", None),
    ("logprobs", json.dumps(chat_body(logprobs=True)).encode(), 400, "logprobs", None),
    ("unknown specfuse option", json.dumps(chat_body(specfuse={"rm_rf": 1})).encode(), 400, "specfuse.rm_rf", None),
    ("bad specfuse value", json.dumps(chat_body(specfuse={"segment_tokens": 0})).encode(), 400, "segment_tokens", None),
    ("unknown model", json.dumps(chat_body() | {"model": "gpt-4o"}).encode(), 404, "model", "model_not_found"),
    ("10 MB body", json.dumps(chat_body("x" * 10_000_000)).encode(), 413, None, "request_too_large"),
]
BAD_REQUESTS += [
    ("a retrieval tool", json.dumps(chat_body(tools=[{"type": "retrieval"}])).encode(), 400, "tools", None),
    ("tool_choice names no tool", json.dumps(chat_body(tools=[WEATHER], tool_choice={"type": "function",
     "function": {"name": "nope"}})).encode(), 400, "tool_choice", None),
    ("response_format xml", json.dumps(chat_body(response_format={"type": "xml"})).encode(), 400, "response_format",
     None),
]


@pytest.mark.parametrize("name, raw, status, param, code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_the_right_4xx_and_the_server_keeps_serving(server, client, name, raw, status, param, code):
    headers = {**server.headers, "Content-Type": "application/json"}
    response = client.post(server.url + "/v1/chat/completions", content=raw, headers=headers)
    assert response.status_code == status, (name, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("invalid_request_error" if status != 429 else "rate_limit_error")
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if param:
        assert param.split(".")[-1] in error["message"] or param == "messages", error
    ok = post(client, server, chat_body(max_tokens=4))
    assert ok.status_code == 200, ok.text


def test_routes_and_methods_answer_with_openai_errors(server, client):
    missing = client.get(server.url + "/v1/nothing", headers=server.headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = client.get(server.url + "/v1/chat/completions", headers=server.headers)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_api_key_is_required_compared_and_never_echoed(server, client):
    wrong = "sk-wrong-" + "7" * 24
    cases = [({}, "missing_api_key"), ({"Authorization": f"Bearer {wrong}"}, "invalid_api_key"),
             ({"Authorization": f"Basic {TEST_KEY}"}, "invalid_api_key"),
             ({"Authorization": f"Bearer {TEST_KEY}x"}, "invalid_api_key"),
             ({"Authorization": f"Bearer {TEST_KEY[:-1]}"}, "invalid_api_key")]  # fmt: skip
    for headers, code in cases:
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            response = client.request(method, server.url + path, json=chat_body(), headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["code"] == code
            assert response.json()["error"]["type"] == "authentication_error"
            assert TEST_KEY not in response.text and wrong not in response.text
    assert client.get(server.url + "/health").status_code == 200  # open: probes carry no key
    assert client.get(server.url + "/metrics").status_code == 200
    assert post(client, server, chat_body(max_tokens=4)).status_code == 200
    log = server.log()
    assert "POST /v1/chat/completions" in log  # the access log is on ...
    assert TEST_KEY[4:] not in log and wrong[4:] not in log  # ... and no key reaches it


def test_metrics_cover_requests_rounds_tokens_calls_and_latency(server, client):
    assert post(client, server, chat_body()).status_code == 200
    samples = server.metrics()

    def value(prefix: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(prefix))

    assert value("specfuse_requests_total{outcome=") >= 1
    assert value("specfuse_rounds_total") >= 2
    assert value("specfuse_output_tokens_total") > 0 and value("specfuse_prompt_tokens_total") > 0
    assert samples['specfuse_member_calls_total{kind="draft",member="tiny-a"}'] > 0
    assert samples['specfuse_member_calls_total{kind="score",member="tiny-b"}'] > 0
    assert value("specfuse_member_wins_total") >= value("specfuse_rounds_total")  # a consensus round has several
    assert samples["specfuse_request_seconds_count"] >= 1 and samples["specfuse_first_segment_seconds_count"] >= 1
    assert samples['specfuse_request_seconds_bucket{le="+Inf"}'] == samples["specfuse_request_seconds_count"]
    assert samples["specfuse_round_seconds_count"] >= 2
    assert samples['specfuse_http_requests_total{route="/v1/chat/completions",status="200"}'] >= 1
    assert samples["specfuse_ready"] == 1
    assert "specfuse_member_exits_total" in client.get(server.url + "/metrics").text


def test_tools_and_response_format_are_passed_through(server, client):
    body = chat_body("What is the weather in Paris?", tools=[WEATHER], tool_choice="required", max_tokens=80)
    whole = post(client, server, body).json()
    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "tool_calls", whole
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Berlin")
    assert not choice["message"]["content"]

    payloads = stream_chat(client, server.url, body, server.headers)
    chunks = segment_chunks(payloads)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
            entry["name"] += (delta.get("function") or {}).get("name") or ""
            entry["arguments"] += (delta.get("function") or {}).get("arguments") or ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == json.loads(call["function"]["arguments"])
    assert "<tool_call>" not in streamed_text(payloads)

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    formatted = post(client, server, chat_body(max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})).json()  # fmt: skip
    assert isinstance(json.loads(formatted["choices"][0]["message"]["content"])["ok"], bool), formatted


def test_503_while_loading_then_ready(tiny_specs):
    import uvicorn

    from specfuse_integrations.server import create_app

    release = threading.Event()

    def load() -> Ensemble:
        release.wait(60)
        return Ensemble.from_specs(tiny_specs, FusionConfig(temperature=0, max_tokens=4))

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        busy = httpx.post(url + "/v1/chat/completions", json=chat_body())
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "loading"
        assert busy.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(url + "/v1/models").status_code == 503
        release.set()
        while httpx.get(url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_over_capacity_gets_429_and_the_queue_drains(tiny_specs, tmp_path):
    srv = ServerProcess(tiny_specs, tmp_path / "serve.log", args=["--temperature", "0", "--max-concurrent", "1",
                                                                  "--max-queue", "1"], threads=1)  # fmt: skip
    long = chat_body("Count slowly.", max_tokens=1500, specfuse={"segment_tokens": 1})
    try:
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b, httpx.Client(timeout=60) as c:
            with a.stream("POST", srv.url + "/v1/chat/completions", json={**long, "stream": True}) as first:
                running = sse_payloads(first.iter_lines())
                assert next(running)["specfuse"]["round"] == 1  # the only slot is taken
                queued_chunks: list = []

                def queued() -> None:
                    with b.stream("POST", srv.url + "/v1/chat/completions", json={**long, "stream": True}) as r:
                        for payload in sse_payloads(r.iter_lines()):
                            queued_chunks.append(payload)
                            if len(queued_chunks) == 2:
                                return

                waiter = threading.Thread(target=queued)
                waiter.start()
                deadline = time.monotonic() + 10
                while srv.metrics().get("specfuse_requests_queued", 0) < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert srv.metrics()["specfuse_requests_queued"] == 1 and not queued_chunks
                refused = c.post(srv.url + "/v1/chat/completions", json=chat_body())
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["type"] == "rate_limit_error"
                assert next(running)["specfuse"]["round"] == 2  # the first request goes on
            waiter.join(30)  # the first one hung up: the queued one runs
            assert len(queued_chunks) == 2 and queued_chunks[0]["specfuse"]["round"] == 1
        assert srv.metrics()["specfuse_requests_rejected_total"] == 1
    finally:
        assert srv.stop() == 0, srv.log()
