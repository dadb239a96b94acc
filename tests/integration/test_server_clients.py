"""Real OpenAI clients against `specfuse serve` (tiny random models, 127.0.0.1), with no specfuse code
on the client side: the official `openai` client, LangChain's ChatOpenAI, LlamaIndex's OpenAILike."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from llama_index.llms.openai_like import OpenAILike

from server_harness import TEST_KEY, server  # noqa: F401 - a fixture

QUESTION = [{"role": "user", "content": "Where is Paris?"}]


@pytest.fixture(scope="module")
def reference(server):
    """The answer the server gives to QUESTION (greedy, so every client must see the same text)."""
    response = httpx.post(server.url + "/v1/chat/completions", headers=server.headers, timeout=120,
                          json={"model": "specfuse", "messages": QUESTION})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_openai_client_chat(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["specfuse"]
    completion = client.chat.completions.create(model="specfuse", messages=QUESTION)
    assert completion.choices[0].message.content == reference["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert completion.model_extra["specfuse"] == reference["specfuse"]  # the extra field survives the client


def test_openai_client_stream(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="specfuse", messages=QUESTION, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    segments = [c for c in chunks if c.choices]
    assert len(segments) == reference["specfuse"]["rounds"]
    assert "".join(c.choices[0].delta.content or "" for c in segments) == reference["choices"][0]["message"]["content"]
    assert segments[-1].choices[0].finish_reason == reference["choices"][0]["finish_reason"]
    assert chunks[-1].usage.total_tokens == reference["usage"]["total_tokens"]
    assert segments[0].model_extra["specfuse"]["round"] == 1


def test_openai_async_client_concurrent_calls_and_errors(server, reference):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, max_retries=0)
        answers = await asyncio.gather(*(client.chat.completions.create(model="specfuse", messages=QUESTION)
                                         for _ in range(3)))  # fmt: skip
        stream = await client.chat.completions.create(model="specfuse", messages=QUESTION, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="specfuse", messages=QUESTION, n=2)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        wrong = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="specfuse", messages=QUESTION)
        await client.close()
        await wrong.close()
        return answers, streamed, bad.value

    answers, streamed, bad = asyncio.run(main())
    expected = reference["choices"][0]["message"]["content"]
    assert [a.choices[0].message.content for a in answers] == [expected] * 3
    assert streamed == expected
    assert bad.status_code == 400 and bad.body["param"] == "n"


def test_langchain_chat_openai(server, reference):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, model="specfuse", max_retries=0)
    expected = reference["choices"][0]["message"]["content"]
    message = llm.invoke("Where is Paris?")
    assert message.content == expected
    assert message.usage_metadata["output_tokens"] == reference["usage"]["completion_tokens"]
    assert message.response_metadata["finish_reason"] == reference["choices"][0]["finish_reason"]
    pieces = list(llm.stream("Where is Paris?"))
    assert "".join(p.content for p in pieces) == expected
    assert sum(1 for p in pieces if p.content) <= reference["specfuse"]["rounds"]
    chain = ChatPromptTemplate.from_template("Where is {city}?") | llm | StrOutputParser()
    assert chain.invoke({"city": "Paris"}) == expected
    assert asyncio.run(chain.ainvoke({"city": "Paris"})) == expected


def test_llama_index_openai_like_query_engine(server, reference):
    from llama_index.core import Document, Settings
    from llama_index.core.llms import ChatMessage
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.retrievers.bm25 import BM25Retriever

    llm = OpenAILike(model="specfuse", api_base=server.url + "/v1", api_key=TEST_KEY, is_chat_model=True,
                     context_window=2048, max_tokens=24, temperature=0, max_retries=0)  # fmt: skip
    documents = [
        Document(text="Paris is the capital of France. The Eiffel Tower stands in Paris."),
        Document(text="Berlin is the capital of Germany. The Brandenburg Gate stands in Berlin."),
        Document(text="Python is a programming language with significant indentation."),
    ]
    previous = Settings._embed_model, Settings._tokenizer
    Settings.embed_model = None  # BM25 needs no embeddings; never reach for a network model
    Settings.tokenizer = str.split  # no tiktoken download
    try:
        from llama_index.core.node_parser import SentenceSplitter

        nodes = SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(documents)
        retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=1)
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        before = _prompt_tokens(server)
        response = engine.query("What stands in Paris?")
        sent = _prompt_tokens(server) - before
    finally:
        Settings._embed_model, Settings._tokenizer = previous
    assert isinstance(response.response, str) and response.response.strip()
    assert "Eiffel" in response.source_nodes[0].node.get_content()
    assert sent > 20, "the retrieved document did not reach the server"
    chat = llm.chat([ChatMessage(role="user", content="Where is Paris?")])
    assert chat.message.content == reference["choices"][0]["message"]["content"]
    streamed = "".join(d.delta or "" for d in llm.stream_complete("Where is Paris?", formatted=False))
    assert streamed == chat.message.content


def _prompt_tokens(server) -> float:
    return server.metrics()["specfuse_prompt_tokens_total"]


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin"]}}, "required": ["city"],
    "additionalProperties": False}}}  # fmt: skip


def test_tool_calls_and_structured_output_through_openai_and_langchain(server):
    import json

    from pydantic import BaseModel

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, max_retries=0)
    completion = client.chat.completions.create(model="specfuse", messages=QUESTION, tools=[WEATHER],
                                                tool_choice="required", max_tokens=80)  # fmt: skip
    (call,) = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Berlin")

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key=TEST_KEY, model="specfuse", max_retries=0, max_tokens=80)
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert message.tool_calls[0]["args"]["city"] in ("Paris", "Berlin")

    class Verdict(BaseModel):
        ok: bool

    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke("Is Paris in France?")
    assert isinstance(verdict, Verdict)
