"""SpecFuseLLM on the real default ensemble inside LlamaIndex: query engine, chat engine, ReAct agent.

Everything runs offline: BM25 retrieval needs no embeddings, and the members load from the local cache.
Generations are greedy and short, to keep CPU time down.
"""

from __future__ import annotations

import asyncio

import pytest

import llama_index.core  # noqa: F401 - a dev dependency: fail loudly if missing
import llama_index.retrievers.bm25  # noqa: F401 - a dev dependency: fail loudly if missing

from llama_index.core import Document, Settings  # noqa: E402
from llama_index.core.agent.workflow import AgentOutput, ReActAgent, ToolCallResult  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole  # noqa: E402
from llama_index.core.chat_engine import SimpleChatEngine  # noqa: E402
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.retrievers.bm25 import BM25Retriever  # noqa: E402

from llama_index_events import recorder  # noqa: E402, F401 - the fixture
from specfuse_core import DEFAULT_MEMBERS  # noqa: E402
from specfuse_integrations.llama_index import SpecFuseLLM, SpecFuseResultEvent, SpecFuseSegmentEvent  # noqa: E402

pytestmark = pytest.mark.slow

# Made-up facts: the answer cannot come from the models' training data.
DOCUMENTS = [
    "The Vellmora Institute's mascot is a purple heron named Tibbet.",
    "Quenmoor holds the Zorblat lantern festival every spring.",
    "Bread is baked in ovens at high temperature.",
    "The river Ostrava freezes only in very cold winters.",
]




@pytest.fixture(scope="module")
def llm() -> SpecFuseLLM:
    return SpecFuseLLM(temperature=0, max_tokens=40)


@pytest.fixture
def settings_llm(llm):
    """``Settings.llm = SpecFuseLLM(...)``, the way users switch every component to the ensemble."""
    previous_llm, previous_embed = Settings._llm, Settings._embed_model
    Settings.llm = llm
    Settings.embed_model = None  # BM25 needs no embeddings; never reach for a network model
    yield llm
    Settings._llm, Settings._embed_model = previous_llm, previous_embed


def test_default_ensemble_metadata(llm):
    meta = llm.metadata
    assert meta.model_name == "specfuse(" + "+".join(DEFAULT_MEMBERS) + ")"
    assert meta.context_window == min(m.context_window for m in llm.ensemble.members)
    assert meta.num_output == 40 and meta.is_chat_model


def test_eight_methods_on_real_models(llm):
    prompt = "What is the capital of France? Answer in a few words."
    messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
    short = {"max_tokens": 8}

    completion = llm.complete(prompt, **short)
    assert isinstance(completion, CompletionResponse) and "Paris" in completion.text
    chat = llm.chat(messages, **short)
    assert isinstance(chat, ChatResponse) and chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == completion.text  # greedy: the same request gives the same answer

    chunks = list(llm.stream_chat(messages, **short))
    assert all(isinstance(c, ChatResponse) and c.message.role == MessageRole.ASSISTANT for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content == completion.text
    assert len(chunks) == chunks[-1].additional_kwargs["specfuse"]["rounds"]
    chunks = list(llm.stream_complete(prompt, **short))
    assert all(isinstance(c, CompletionResponse) for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].text == completion.text

    async def run_async():
        a_completion = await llm.acomplete(prompt, **short)
        a_chat = await llm.achat(messages, **short)
        a_chat_chunks = [c async for c in await llm.astream_chat(messages, **short)]
        a_completion_chunks = [c async for c in await llm.astream_complete(prompt, **short)]
        return a_completion, a_chat, a_chat_chunks, a_completion_chunks

    a_completion, a_chat, a_chat_chunks, a_completion_chunks = asyncio.run(run_async())
    assert isinstance(a_completion, CompletionResponse) and a_completion.text == completion.text
    assert isinstance(a_chat, ChatResponse) and a_chat.message.content == completion.text
    assert all(isinstance(c, ChatResponse) for c in a_chat_chunks)
    assert "".join(c.delta for c in a_chat_chunks) == completion.text
    assert all(isinstance(c, CompletionResponse) for c in a_completion_chunks)
    assert "".join(c.delta for c in a_completion_chunks) == completion.text
    summary = a_chat.additional_kwargs["specfuse"]
    assert set(summary["wins"]) == set(DEFAULT_MEMBERS) and summary["rounds"] >= 1


def test_query_engine_answers_from_local_documents(settings_llm, recorder):
    nodes = SentenceSplitter(chunk_size=256, chunk_overlap=0).get_nodes_from_documents([Document(text=t) for t in DOCUMENTS])
    retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=1)
    engine = RetrieverQueryEngine.from_args(retriever)  # uses Settings.llm
    response = engine.query("What is the name of the Vellmora Institute's mascot?")
    assert "Tibbet" in str(response)
    assert "Tibbet" in response.source_nodes[0].node.get_content()
    # The per-segment trace reached the event handler: which member wrote which segment.
    segments = recorder.of(SpecFuseSegmentEvent)
    assert segments and all(set(s.winners) <= set(DEFAULT_MEMBERS) and s.winners for s in segments)
    (result,) = recorder.of(SpecFuseResultEvent)
    assert "".join(s.text for s in segments) == result.text
    assert result.summary["rounds"] == len(segments)


def test_chat_engine_holds_a_two_turn_conversation(settings_llm, recorder):
    engine = SimpleChatEngine.from_defaults(llm=settings_llm)
    first = engine.chat("My name is Zara. Please remember it.")
    assert str(first).strip()
    second = engine.chat("What is my name?")
    assert "Zara" in str(second)
    starts = recorder.of(LLMChatStartEvent)
    assert len(starts) == 2
    history = [(m.role, m.content) for m in starts[1].messages]
    assert (MessageRole.USER, "My name is Zara. Please remember it.") in history
    assert (MessageRole.ASSISTANT, str(first)) in history  # the second turn saw the first
    assert len(engine.chat_history) == 4


MULTIPLY_CALLS: list[tuple[int, int]] = []


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    MULTIPLY_CALLS.append((a, b))  # the evidence that the agent really ran the tool
    return a * b


class NeverRanTheTool(Exception):
    """The known failure: the ReAct agent answers without calling the tool at all."""


# Measured on the default ensemble (greedy, CPU): the agent calls no tool and answers
# "1234 * 5678 = 700000000" (wrong; 7006652 is right). Strict: the day the tool runs, XPASS fails
# and this marker must go. Only that failure is expected (raises=): a tool call that goes wrong fails.
@pytest.mark.xfail(strict=True, raises=NeverRanTheTool, reason="the tiny default ensemble never writes a ReAct Action")
def test_react_agent_runs_end_to_end_with_a_tool(recorder):
    agent_llm = SpecFuseLLM(temperature=0, max_tokens=60, stop=["Observation:"])
    agent = ReActAgent(tools=[multiply], llm=agent_llm)
    MULTIPLY_CALLS.clear()

    async def run():
        handler = agent.run(
            user_msg="What is 1234 times 5678? Use the multiply tool.",  # too hard to do in the head
            max_iterations=4,
            early_stopping_method="generate",  # small models may loop: end with an answer, not an exception
        )
        events = [event async for event in handler.stream_events()]
        return await handler, events

    output, events = asyncio.run(run())
    assert isinstance(output, AgentOutput)
    tool_results = [e for e in events if isinstance(e, ToolCallResult)]
    print("tool calls:", [(e.tool_name, e.tool_kwargs, str(e.tool_output)) for e in tool_results])
    print("answer:", output.response.content)
    if not tool_results and not MULTIPLY_CALLS:
        raise NeverRanTheTool(f"answer without a tool call: {output.response.content!r}")
    # The agent called the tool, and the tool itself ran (not only a call rejected for its arguments).
    assert [e.tool_name for e in tool_results][:1] == ["multiply"], tool_results
    assert MULTIPLY_CALLS, "the agent never ran the multiply tool"
    assert any(str(a * b) in str(e.tool_output) for a, b in MULTIPLY_CALLS for e in tool_results)
    assert recorder.of(SpecFuseSegmentEvent)  # the agent's LLM calls ran on the ensemble
