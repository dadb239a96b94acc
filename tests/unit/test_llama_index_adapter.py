"""SpecFuseLLM: the LlamaIndex adapter, its interface and its translation of messages, streams and events.

These tests run the adapter over scripted members (interface and translation only). Real models:
tests/integration/test_llama_index.py (tiny random ones, shared between adapters) and
tests/integration/test_llama_index_real.py (``slow``: the default ensemble, the evidence that it works).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import llama_index.core  # noqa: F401 - a dev dependency: fail loudly if missing

from llama_index.core.base.llms.types import (  # noqa: E402
    AudioBlock,
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.callbacks.base_handler import BaseCallbackHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import (  # noqa: E402
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.llms import LLM, CustomLLM  # noqa: E402

from scripted import ScriptedMember  # noqa: E402
from llama_index_events import recorder  # noqa: E402, F401 - the fixture
from specfuse_core import ConfigError, Ensemble, FusionConfig, InvalidRequestError  # noqa: E402
from specfuse_integrations.llama_index import (  # noqa: E402
    SpecFuseLLM,
    SpecFuseResultEvent,
    SpecFuseSegmentEvent,
    to_specfuse_messages,
)

ROOT = Path(__file__).resolve().parents[2]
USER = [ChatMessage(role=MessageRole.USER, content="Say hello.")]


def scripted_ensemble(**config) -> Ensemble:
    """Three-segment answers; member 'a' scores everything higher, so 'a' wins every round."""
    a = ScriptedMember("a", [("Hello there, ", False), ("my good ", False), ("friend.", True)], context_window=2048)
    b = ScriptedMember(
        "b", [("Hi there, ", False), ("old ", False), ("pal.", True)], prob=lambda *_: 0.3, context_window=4096
    )
    return Ensemble([a, b], FusionConfig(**config))


@pytest.fixture
def llm() -> SpecFuseLLM:
    return SpecFuseLLM(ensemble=scripted_ensemble(segment_tokens=3))




class CallbackRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.starts: list = []
        self.ends: list = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
        self.starts.append((event_type, payload))
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
        self.ends.append((event_type, payload))

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


# -- the class ----------------------------------------------------------------------------------


def test_import_without_llama_index_names_the_extra():
    code = (
        "import sys\n"
        "for name in ('llama_index', 'llama_index.core'):\n"
        "    sys.modules[name] = None\n"
        "try:\n"
        "    import specfuse_integrations.llama_index\n"
        "except ImportError as exc:\n"
        "    print('ERR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout, out.stderr
    assert "llama-index" in out.stdout and "pip install" in out.stdout


def test_subclasses_llm_not_custom_llm():
    assert LLM in SpecFuseLLM.__mro__
    assert issubclass(SpecFuseLLM, LLM)
    assert not issubclass(SpecFuseLLM, CustomLLM)
    for name in ("complete", "stream_complete", "chat", "stream_chat"):
        assert not inspect.iscoroutinefunction(getattr(SpecFuseLLM, name))
    for name in ("acomplete", "astream_complete", "achat", "astream_chat"):
        assert inspect.iscoroutinefunction(getattr(SpecFuseLLM, name)), name
        assert getattr(SpecFuseLLM, name) is not getattr(CustomLLM, name)


def test_callback_manager_is_kept():
    manager = CallbackManager([])
    llm = SpecFuseLLM(ensemble=scripted_ensemble(), callback_manager=manager)
    assert llm.callback_manager is manager


def test_metadata(llm):
    meta = llm.metadata
    assert meta.context_window == 2048  # the smallest member's
    assert meta.num_output == 512
    assert meta.is_chat_model is True
    assert meta.is_function_calling_model is True  # FunctionAgent and FunctionCallingProgram accept it
    assert meta.model_name == "specfuse(a+b)"
    assert SpecFuseLLM(ensemble=scripted_ensemble(max_tokens=77)).metadata.num_output == 77


def test_fusion_options_and_wrapping(llm):
    ens = scripted_ensemble()
    wrapped = SpecFuseLLM(ensemble=ens)
    assert wrapped.ensemble is ens
    tuned = SpecFuseLLM(ensemble=ens, segment_tokens=2, score_mode="mean_logprob", exclude_self_scores=True)
    assert tuned.ensemble.members == ens.members  # same members, other options
    assert (tuned.config.segment_tokens, tuned.config.score_mode, tuned.config.exclude_self_scores) == (
        2,
        "mean_logprob",
        True,
    )
    assert ens.config.segment_tokens == 10  # the wrapped ensemble is not changed
    again = SpecFuseLLM(ensemble=ens, fusion_options=tuned.fusion_options)
    assert again.config == tuned.config and tuned.fusion_options["segment_tokens"] == 2
    with pytest.raises(ConfigError, match="bogus"):
        SpecFuseLLM(ensemble=ens, bogus=1)
    with pytest.raises(ConfigError):
        SpecFuseLLM(ensemble=ens, segment_tokens=0)
    with pytest.raises(ConfigError):
        SpecFuseLLM(ensemble=ens, members=["x"])


def test_per_call_overrides(llm):
    full = llm.complete("Say hello.")
    short = llm.complete("Say hello.", max_tokens=2)
    assert full.additional_kwargs["finish_reason"] == "stop"
    assert short.additional_kwargs["finish_reason"] == "length"
    assert len(short.text) < len(full.text)


# -- messages -----------------------------------------------------------------------------------


def test_messages_are_translated():
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.DEVELOPER, content="Really brief."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="Hello, "), TextBlock(text="world")]),
        ChatMessage(role=MessageRole.ASSISTANT, content="Hi."),
        ChatMessage(role=MessageRole.USER, content="Again?"),
    ]
    assert to_specfuse_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Really brief."},
        {"role": "user", "content": "Hello, world"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again?"},
    ]


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (ChatMessage(role="user", blocks=[TextBlock(text="What?"), ImageBlock(url="http://x/y.png")]), "ImageBlock"),
        (ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF0000", format="wav")]), "AudioBlock"),
        (
            ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [{"id": "1"}]}),
            "no tool name",
        ),
        (ChatMessage(role=MessageRole.TOOL, content="42"), "tool_call_id"),
        (ChatMessage(role=MessageRole.TOOL, content="42", additional_kwargs={"tool_call_id": "c9"}), "matches no"),
        (ChatMessage(role=MessageRole.FUNCTION, content="42"), "legacy function"),
    ],
)
def test_unsupported_content_raises_a_clear_error(llm, message, needle):
    for call in (llm.chat, llm.stream_chat):
        with pytest.raises(InvalidRequestError, match=needle) as info:
            call([ChatMessage(role="user", content="hi"), message])
        assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidRequestError, match=needle):
        asyncio.run(llm.astream_chat([message]))


def test_empty_request_is_rejected_by_the_core(llm):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.chat([])


# -- the eight methods --------------------------------------------------------------------------


def check_stream(chunks, expected_text, kind):
    assert chunks and all(isinstance(c, kind) for c in chunks)
    deltas = [c.delta for c in chunks]
    assert all(deltas), deltas
    assert "".join(deltas) == expected_text
    last = chunks[-1]
    text = last.message.content if kind is ChatResponse else last.text
    assert text == expected_text
    assert last.additional_kwargs["specfuse"]["rounds"] == len(chunks)  # one delta per accepted segment
    assert last.raw["text"] == expected_text and len(last.raw["trace"]) == len(chunks)
    if kind is ChatResponse:
        assert all(c.message.role == MessageRole.ASSISTANT for c in chunks)


def test_sync_methods(llm):
    completion = llm.complete("Say hello.")
    assert isinstance(completion, CompletionResponse)
    assert completion.text == "Hello there, my good friend."
    assert completion.additional_kwargs["specfuse"]["wins"] == {"a": 3, "b": 0}
    chat = llm.chat(USER)
    assert isinstance(chat, ChatResponse)
    assert chat.message.role == MessageRole.ASSISTANT and chat.message.content == completion.text
    assert chat.raw["summary"] == chat.additional_kwargs["specfuse"]
    check_stream(list(llm.stream_complete("Say hello.")), completion.text, CompletionResponse)
    check_stream(list(llm.stream_chat(USER)), completion.text, ChatResponse)


async def test_async_methods(llm):
    expected = "Hello there, my good friend."
    completion = await llm.acomplete("Say hello.")
    assert isinstance(completion, CompletionResponse) and completion.text == expected
    chat = await llm.achat(USER)
    assert isinstance(chat, ChatResponse) and chat.message.content == expected
    assert chat.message.role == MessageRole.ASSISTANT
    check_stream([c async for c in await llm.astream_complete("Say hello.")], expected, CompletionResponse)
    check_stream([c async for c in await llm.astream_chat(USER)], expected, ChatResponse)


def test_async_streaming_under_asyncio_run(llm):
    async def collect():
        return [c async for c in await llm.astream_chat(USER)]

    check_stream(asyncio.run(collect()), "Hello there, my good friend.", ChatResponse)


def test_stopping_a_stream_early_closes_the_request(llm):
    stream = llm.stream_chat(USER)
    first = next(stream)
    assert first.delta == "Hello there, "
    stream.close()
    sessions = [s for m in llm.ensemble.members for s in m.sessions]
    assert sessions and all(s.closed for s in sessions)


# -- events and callbacks -----------------------------------------------------------------------


def test_instrumentation_events_carry_the_trace(llm, recorder):
    response = llm.chat(USER)
    assert len(recorder.of(LLMChatStartEvent)) == 1
    assert len(recorder.of(LLMChatEndEvent)) == 1
    segments = recorder.of(SpecFuseSegmentEvent)
    assert [s.round for s in segments] == [1, 2, 3]
    assert "".join(s.text for s in segments) == response.message.content
    assert all(s.winners == ["a"] for s in segments)
    first = segments[0].segment
    assert {c["text"] for c in first["candidates"]} == {"Hello there, ", "Hi there, "}
    assert list(first["scorers"]) == ["a", "b"]
    (result,) = recorder.of(SpecFuseResultEvent)
    assert result.summary == response.additional_kwargs["specfuse"]
    assert result.trace["text"] == response.message.content

    recorder.events.clear()
    chunks = list(llm.stream_complete("Say hello."))
    assert len(recorder.of(LLMCompletionStartEvent)) == 1 and len(recorder.of(LLMCompletionEndEvent)) == 1
    assert len(recorder.of(SpecFuseSegmentEvent)) == len(chunks) == 3
    assert len(recorder.of(SpecFuseResultEvent)) == 1


async def test_instrumentation_events_fire_for_async_calls(llm, recorder):
    await llm.acomplete("Say hello.")
    assert len(recorder.of(LLMCompletionStartEvent)) == 1 and len(recorder.of(LLMCompletionEndEvent)) == 1
    assert len(recorder.of(SpecFuseSegmentEvent)) == 3
    recorder.events.clear()
    [c async for c in await llm.astream_chat(USER)]
    assert len(recorder.of(LLMChatStartEvent)) == 1 and len(recorder.of(LLMChatEndEvent)) == 1
    assert len(recorder.of(SpecFuseSegmentEvent)) == 3 and len(recorder.of(SpecFuseResultEvent)) == 1


def test_callback_handler_sees_the_trace():
    handler = CallbackRecorder()
    llm = SpecFuseLLM(ensemble=scripted_ensemble(segment_tokens=3), callback_manager=CallbackManager([handler]))
    for call in (lambda: llm.chat(USER), lambda: list(llm.stream_chat(USER))[-1]):
        handler.starts.clear()
        handler.ends.clear()
        call()
        assert [t.value for t, _ in handler.starts] == ["llm"]
        (_, payload), = handler.ends
        response = payload["response"]
        trace = response.raw["trace"]
        assert [list(e["winners"]) for e in trace] == [["a"], ["a"], ["a"]]  # who wrote what, per segment
        assert response.additional_kwargs["specfuse"]["rounds"] == 3
