"""SpecFuseChatModel in real LangChain use: LCEL, RAG, provenance events, sharing, bad input.

The fast tests need no model: bad input is rejected before anything loads (a member spec that
does not exist proves it: loading it would fail with a different error). The slow tests run the
real default ensemble (two members with different tokenizers), greedy and with short answers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from pydantic import ValidationError

from specfuse_core import DEFAULT_MEMBERS, ConfigError, Ensemble, FusionConfig, InvalidRequestError
from specfuse_integrations.langchain import SEGMENT_EVENT, ChatSpecFuse, SpecFuseChatModel, to_specfuse_messages

ROOT = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/specfuse-test-member"  # loading this would raise ModelLoadError, not InvalidRequestError


# -- fast: construction, options, identity -------------------------------------------------------


def test_alias_and_import():
    assert ChatSpecFuse is SpecFuseChatModel
    assert SpecFuseChatModel()._llm_type == "specfuse"


def test_import_without_the_extra_names_it():
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import specfuse_integrations.langchain\n"
        "except ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout, out.stderr
    assert "'langchain' extra" in out.stdout and "specfuse[langchain]" in out.stdout


def test_construction_does_not_load_and_names_the_ensemble():
    model = SpecFuseChatModel(members=[MISSING, "smollm2-135m-instruct::draft"], segment_tokens=4)
    assert model.ensemble_name == "specfuse(specfuse-test-member+smollm2-135m-instruct)"
    assert SpecFuseChatModel().ensemble_name == "specfuse(" + "+".join(DEFAULT_MEMBERS) + ")"


def test_ls_params_report_provider_and_honour_model_override():
    model = SpecFuseChatModel(temperature=0.2, max_tokens=7, stop=["END"])
    params = model._get_ls_params()
    assert params["ls_provider"] == "specfuse"
    assert params["ls_model_type"] == "chat"
    assert params["ls_model_name"] == model.ensemble_name
    assert (params["ls_temperature"], params["ls_max_tokens"], params["ls_stop"]) == (0.2, 7, ["END"])
    assert model._get_ls_params(model="a+b")["ls_model_name"] == "a+b"


def test_invalid_options_fail_at_construction():
    # ConfigError raised inside pydantic validation surfaces as a ValidationError: both are ValueErrors.
    with pytest.raises(ValueError, match="segment_tokens must be an integer >= 1"):
        SpecFuseChatModel(segment_tokens=0)
    with pytest.raises(ValidationError):
        SpecFuseChatModel(score_mode="best")
    with pytest.raises(ValidationError):
        SpecFuseChatModel(segment_token=4)  # typo: unknown fields are rejected, not ignored
    with pytest.raises(ValueError, match="members is empty"):
        SpecFuseChatModel(members=[])


def test_fusion_option_fields_are_typed_from_fusion_config():
    # That every option is a field is tests/unit/test_front_door_options.py's job; here: the types.
    assert all(name in SpecFuseChatModel.model_fields for name in ("exit_quality", "kv_cache", "tool_vote", "stop"))
    with pytest.raises(ValidationError, match="exit_quality\n  Input should be 'wins' or 'scores'"):
        SpecFuseChatModel(exit_quality="votes")


def test_message_translation():
    converted = to_specfuse_messages(
        [
            SystemMessage("be brief"),
            HumanMessage([{"type": "text", "text": "hi"}], name="ann"),
            AIMessage("hello"),
            ChatMessage(role="user", content="again"),
        ]
    )
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "user"]


# -- fast: bad input is rejected before any model loads ------------------------------------------

IMAGE = {"type": "image", "url": "http://x/y.png"}
IMAGE_URL = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
AUDIO = {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}
INPUT_AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
TOOL_CALL = {"name": "add", "args": {}, "id": "1"}
BAD_INPUTS = {
    "image block": ([HumanMessage([{"type": "text", "text": "what is this?"}, IMAGE])], "'image'"),
    "image_url block": ([HumanMessage([IMAGE_URL])], "'image_url'"),
    "audio block": ([HumanMessage([AUDIO])], "'audio'"),
    "input_audio block": ([HumanMessage([INPUT_AUDIO])], "'audio'"),  # LangChain normalises it to 'audio'
    "tool message answering no call": ([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")], "matches no tool call"),
    "tool call without its tool": (
        [HumanMessage("hi"), AIMessage("", tool_calls=[TOOL_CALL]), ToolMessage("42", tool_call_id="2")],
        "'2' matches no tool call",
    ),
    "function message": ([HumanMessage("hi"), FunctionMessage("42", name="add")], "FunctionMessage"),
    "unknown message type": ([RemoveMessage(id="x")], "unsupported message type RemoveMessage"),
    "unknown role": ([ChatMessage(role="critic", content="hm")], "unknown role 'critic'"),
    "empty list": ([], "empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case):
    messages, expected = BAD_INPUTS[case]
    model = SpecFuseChatModel(members=[MISSING])
    with pytest.raises(InvalidRequestError) as info:
        model.invoke(messages)
    assert expected in str(info.value)
    with pytest.raises(InvalidRequestError):
        list(model.stream(messages))


async def test_bad_input_raises_async():
    model = SpecFuseChatModel(members=[MISSING])
    messages, expected = BAD_INPUTS["image block"]
    with pytest.raises(InvalidRequestError, match=expected):
        await model.ainvoke(messages)
    with pytest.raises(InvalidRequestError, match=expected):
        async for _ in model.astream(messages):
            pass


def test_custom_message_subclass_is_rejected():
    class Critique(BaseMessage):
        type: str = "critique"

    with pytest.raises(InvalidRequestError, match="Critique"):
        SpecFuseChatModel(members=[MISSING]).invoke([Critique("too long")])


# -- slow: the real default ensemble -------------------------------------------------------------

slow = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm() -> SpecFuseChatModel:
    return SpecFuseChatModel(temperature=0, max_tokens=16, segment_tokens=5)


class SegmentLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.tokens: list[str] = []

    def on_custom_event(self, name, data, *, run_id, **kwargs):
        if name == SEGMENT_EVENT:
            self.events.append(data)

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


@slow
def test_models_are_shared_and_never_reloaded(llm):
    ensemble = llm.get_ensemble()
    other = SpecFuseChatModel(max_tokens=5)
    assert [m for m in other.get_ensemble().members] == list(ensemble.members)  # same loaded objects
    assert all(a is b for a, b in zip(other.get_ensemble().members, ensemble.members))
    bound = llm.bind(stop=["\n\n"]).with_config(tags=["x"])
    answer = bound.invoke(QUESTION)
    assert answer.content
    assert llm.get_ensemble() is ensemble  # bind/with_config run this very instance and ensemble
    wrapped = SpecFuseChatModel(ensemble=ensemble, temperature=0, max_tokens=12)
    assert wrapped.get_ensemble() is ensemble
    assert wrapped.ensemble_name == ensemble.name


@slow
def test_invoke_metadata_and_usage(llm):
    message = llm.invoke(QUESTION)
    assert "Paris" in message.content
    meta = message.response_metadata
    ensemble = llm.get_ensemble()
    assert meta["model_name"] == ensemble.name
    assert meta["finish_reason"] in ("stop", "length")
    summary = meta["specfuse"]
    assert set(summary["wins"]) == set(DEFAULT_MEMBERS)
    assert summary["rounds"] >= 1 and sum(summary["wins"].values()) >= summary["rounds"]
    assert summary["calls_per_round"] > 0 and summary["exited"] == []
    usage = message.usage_metadata
    first = ensemble.members[0]
    assert usage["output_tokens"] == len(first.tokenizer.encode(message.content, add_special_tokens=False))
    assert usage["input_tokens"] > 10
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@slow
def test_streaming_one_chunk_and_one_event_per_segment(llm):
    log = SegmentLog()
    chunks = list(llm.stream("Explain in two sentences why the sky is blue.", config={"callbacks": [log]}))
    assert len(chunks) >= 2
    assert len(log.events) == len(chunks) == len(log.tokens)
    assert [c.content for c in chunks] == [e["text"] for e in log.events] == log.tokens
    assert [e["round"] for e in log.events] == list(range(1, len(chunks) + 1))
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] > 0
    assert all(c.usage_metadata is None for c in chunks[:-1])
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.response_metadata["specfuse"]["rounds"] == len(chunks)
    for event in log.events:
        assert set(event["winners"]) <= set(DEFAULT_MEMBERS)
        assert len(event["scores"]) == len(event["scorers"])
        assert all(len(row) == len(event["candidates"]) for row in event["scores"])
    # Greedy: the streamed answer is the invoked answer.
    assert full.content == llm.invoke("Explain in two sentences why the sky is blue.").content


@slow
async def test_invoke_with_streaming_true_sends_segment_events(llm):
    streaming = SpecFuseChatModel(ensemble=llm.get_ensemble(), streaming=True, temperature=0, max_tokens=16,
                                  segment_tokens=5)  # fmt: skip
    log = SegmentLog()
    message = streaming.invoke(QUESTION, config={"callbacks": [log]})
    assert log.events and len(log.events) == message.response_metadata["specfuse"]["rounds"]
    assert "".join(e["text"] for e in log.events) == message.content == "".join(log.tokens)
    alog = SegmentLog()
    amessage = await streaming.ainvoke(QUESTION, config={"callbacks": [alog]})
    assert [e["text"] for e in alog.events] == [e["text"] for e in log.events] and amessage.content == message.content


@slow
async def test_async_paths_match_sync(llm):
    sync_text = llm.invoke(QUESTION).content
    assert (await llm.ainvoke(QUESTION)).content == sync_text
    log = SegmentLog()
    parts = [c.content async for c in llm.astream(QUESTION, config={"callbacks": [log]})]
    assert "".join(parts) == sync_text
    assert len(log.events) == len(parts)


@slow
def test_per_call_overrides(llm):
    long = llm.invoke("Count from one to twenty in words.", segment_tokens=3, max_tokens=12)
    assert long.response_metadata["specfuse"]["rounds"] >= 3
    assert long.usage_metadata["output_tokens"] <= 12
    stopped = llm.invoke(QUESTION, stop=["Paris"])
    assert "Paris" not in stopped.content
    solo = llm.invoke(QUESTION, model="smollm2-135m-instruct")
    assert solo.response_metadata["model_name"] == "specfuse(smollm2-135m-instruct)"
    summary = solo.response_metadata["specfuse"]
    assert summary["wins"] == {"smollm2-135m-instruct": summary["rounds"]}
    with pytest.raises(ConfigError, match="unknown option 'frequency_penalty'"):
        llm.invoke(QUESTION, frequency_penalty=0.5)


@slow
def test_timeout_is_enforced():
    model = SpecFuseChatModel(temperature=0, max_tokens=30, segment_tokens=2, timeout=1e-6)
    with pytest.raises(TimeoutError, match="timeout"):
        model.invoke("Count from one to twenty in words.")


@slow
def test_lcel_chain_invoke_stream_batch(llm):
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You answer in one short sentence."), ("user", "What is the capital of {country}?")]
    )
    chain = prompt | llm | StrOutputParser()
    answer = chain.invoke({"country": "France"})
    assert isinstance(answer, str) and "Paris" in answer
    pieces = list(chain.stream({"country": "France"}))
    assert len(pieces) >= 1 and "".join(pieces) == answer
    answers = chain.batch([{"country": "France"}, {"country": "Japan"}, {"country": "Italy"}])
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    assert "Paris" in answers[0] and "Tokyo" in answers[1] and "Rome" in answers[2]


DOCS = [
    "The Quillmere Lantern Festival is held every autumn in the mountain town of Brackenholt.",
    "Brackenholt is known for its slate roofs and a stone bridge built in 1742.",
    "The Zephyr-9 drone has a flight time of 47 minutes and folds to the size of a book.",
    "Grandma Ilse's plum cake uses cardamom, brown butter and exactly seven plums.",
    "The Orvane river freezes completely only once every twelve years.",
]


def _rag_chain(model):
    from langchain_community.retrievers import BM25Retriever

    retriever = BM25Retriever.from_documents([Document(page_content=d) for d in DOCS], k=2)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question using only this context:\n{context}"),
            ("user", "{question}"),
        ]
    )

    def join(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    chain = {"context": retriever | join, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    return retriever, chain


@slow
def test_rag_chain_answers_from_the_documents(llm):
    retriever, chain = _rag_chain(llm.bind(max_tokens=32))  # room for a full sentence
    question = "In which town is the Quillmere Lantern Festival held?"
    assert "Brackenholt" in retriever.invoke(question)[0].page_content
    answer = chain.invoke(question)
    assert "Brackenholt" in answer  # a made-up fact: only the retrieved document has it


@slow
async def test_astream_events_carry_per_segment_provenance(llm):
    prompt = ChatPromptTemplate.from_messages([("user", "{q}")])
    chain = prompt | llm | StrOutputParser()
    segments, streamed, final = [], [], None
    async for event in chain.astream_events({"q": "Explain in two sentences why the sky is blue."}, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == SEGMENT_EVENT:
            segments.append(event["data"])
        elif event["event"] == "on_chat_model_stream":
            streamed.append(event["data"]["chunk"].content)
        elif event["event"] == "on_chat_model_end":
            final = event["data"]["output"]
    assert len(segments) >= 2 and len(segments) == len(streamed)
    assert "".join(s["text"] for s in segments) == "".join(streamed) == final.content
    wins = final.response_metadata["specfuse"]["wins"]
    for name in DEFAULT_MEMBERS:
        assert wins[name] == sum(name in s["winners"] for s in segments)


@slow
def test_wraps_an_existing_ensemble_with_its_own_config():
    ensemble = Ensemble.from_specs(None, FusionConfig(temperature=0, max_tokens=10, segment_tokens=5))
    model = SpecFuseChatModel(ensemble=ensemble)
    message = model.invoke(QUESTION)
    assert message.usage_metadata["output_tokens"] <= 10
    assert message.response_metadata["specfuse"]["rounds"] >= 1
