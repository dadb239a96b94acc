"""LlamaIndex adapter: :class:`SpecFuseLLM`, a ``llama_index.core.llms.LLM`` backed by a specfuse ensemble.

>>> from llama_index.core import Settings
>>> from specfuse_integrations.llama_index import SpecFuseLLM
>>> Settings.llm = SpecFuseLLM(temperature=0)      # the default ensemble; every component now uses it

This module only translates: LlamaIndex messages to ``{"role", "content"}`` dicts, SpecFuse segments
to LlamaIndex (streaming) responses, and the per-segment trace to LlamaIndex instrumentation events.
All fusion logic lives in :mod:`specfuse_core`.

Every call emits the standard LLM events (``LLMChatStartEvent`` ... / callback-manager ``LLM`` events)
plus one :class:`SpecFuseSegmentEvent` per accepted segment and one :class:`SpecFuseResultEvent` at the
end, all through the LlamaIndex dispatcher, so an event handler can log which member wrote what.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import aclosing, closing
from typing import Any

try:
    from llama_index.core.base.llms.types import (
        AudioBlock,
        CachePoint,
        ChatMessage,
        ChatResponse,
        ChatResponseAsyncGen,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseAsyncGen,
        CompletionResponseGen,
        ImageBlock,
        LLMMetadata,
        MessageRole,
        TextBlock,
        ThinkingBlock,
    )
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.llm import LLM
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "specfuse_integrations.llama_index needs LlamaIndex: install the 'llama-index' extra, "
        "e.g. pip install 'specfuse[llama-index]'"
    ) from exc

from specfuse_core import Ensemble, FusionConfig, FusionResult, SegmentEvent
from specfuse_core.errors import ConfigError, InvalidRequestError
from specfuse_core.messages import validate_messages

__all__ = ["SpecFuseLLM", "SpecFuseResultEvent", "SpecFuseSegmentEvent", "to_specfuse_messages"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

FUSION_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(FusionConfig)) - {"extra"}
"""Keyword arguments that are fusion options (``FusionConfig`` fields)."""

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


# -- instrumentation events ---------------------------------------------------------------------


class SpecFuseSegmentEvent(BaseEvent):
    """One accepted segment of a SpecFuse request: who drafted it, the candidates and the scores.

    ``segment`` is :meth:`specfuse_core.SegmentEvent.to_dict` (round, text, winners, candidates,
    scorers, scores, totals, weights, active, exits, calls, timings, ...).
    """

    model_name: str
    round: int
    text: str
    winners: list[str]
    segment: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "SpecFuseSegmentEvent"


class SpecFuseResultEvent(BaseEvent):
    """The end of a SpecFuse request: the summary and the full trace (:meth:`FusionResult.to_dict`)."""

    model_name: str
    text: str
    summary: dict[str, Any]
    trace: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "SpecFuseResultEvent"


# -- message translation ------------------------------------------------------------------------


def to_specfuse_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages as specfuse ``{"role", "content"}`` dicts (text only).

    Raises :class:`specfuse_core.InvalidRequestError` (a ``ValueError``) for images, audio, documents,
    tool calls, tool results and any other non-text content, naming what was found.
    """
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise InvalidRequestError(f"message {index} is a {type(message).__name__}, expected a ChatMessage")
        role = _ROLES.get(MessageRole(message.role))
        if role is None:
            raise InvalidRequestError(
                f"message {index}: role {MessageRole(message.role).value!r} (tool or function results) is not "
                "supported; SpecFuseLLM accepts system, user and assistant text messages only"
            )
        if message.additional_kwargs.get("tool_calls") or message.additional_kwargs.get("function_call"):
            raise InvalidRequestError(f"message {index}: tool calls are not supported by SpecFuseLLM")
        parts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, (CachePoint, ThinkingBlock)):
                continue  # provider hints / hidden reasoning: no content to send
            else:
                kind = {ImageBlock: "image", AudioBlock: "audio"}.get(type(block), "non-text")
                raise InvalidRequestError(
                    f"message {index}: {type(block).__name__} ({kind} content) is not supported; "
                    "SpecFuseLLM accepts text content only"
                )
        converted.append({"role": role, "content": "".join(parts)})
    return validate_messages(converted)


# -- the LLM ------------------------------------------------------------------------------------


class SpecFuseLLM(LLM):
    """A LlamaIndex LLM whose answers come from a SpecFuse ensemble.

    ``SpecFuseLLM()`` uses the default ensemble; ``SpecFuseLLM(members=[...], segment_tokens=8, ...)``
    builds one from member specs (loaded members are shared with other adapters and ensembles that
    use the same specs); ``SpecFuseLLM(ensemble=ens)`` wraps an existing :class:`Ensemble`.
    Keyword arguments that are :class:`FusionConfig` fields are fusion options; at call time they
    override per call, e.g. ``llm.complete("Hi", max_tokens=20)``.
    """

    members: list[str] | None = Field(default=None, description="Member specs; None: the default ensemble.")
    fusion_options: dict[str, Any] = Field(default_factory=dict, description="FusionConfig fields set here.")
    member_options: dict[str, Any] = Field(
        default_factory=dict, description="Options for every member (device, dtype, ...)."
    )

    _ensemble: Ensemble = PrivateAttr()

    def __init__(
        self,
        members: Sequence[str] | str | None = None,
        *,
        ensemble: Ensemble | None = None,
        config: FusionConfig | None = None,
        member_options: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        fusion = dict(kwargs.pop("fusion_options", None) or {})  # as serialised by model_dump()
        fusion.update({k: kwargs.pop(k) for k in list(kwargs) if k in FUSION_FIELDS})
        unknown = sorted(set(kwargs) - set(LLM.model_fields))
        if unknown:
            raise ConfigError(f"unknown SpecFuseLLM option(s): {', '.join(unknown)}")
        if isinstance(members, str):
            members = [members]
        if ensemble is not None and (members is not None or member_options):
            raise ConfigError("pass either ensemble= or members=/member_options=, not both")
        if ensemble is not None and not isinstance(ensemble, Ensemble):
            raise ConfigError(f"ensemble must be a specfuse_core.Ensemble, got {type(ensemble).__name__}")
        base = config or (ensemble.config if ensemble is not None else FusionConfig())
        effective = base.replace(**fusion) if fusion else base  # validates the options
        super().__init__(
            members=None if members is None else list(members),
            fusion_options=fusion,
            member_options=dict(member_options or {}),
            callback_manager=callback_manager,
            **kwargs,
        )
        if ensemble is None:
            ensemble = Ensemble.from_specs(self.members, effective, share=True, **self.member_options)
        elif effective is not ensemble.config:
            shared = Ensemble(ensemble.members, effective)  # same loaded members, other options
            shared.weights = dict(ensemble.weights)
            ensemble = shared
        self._ensemble = ensemble

    @classmethod
    def class_name(cls) -> str:
        return "SpecFuseLLM"

    @property
    def ensemble(self) -> Ensemble:
        """The wrapped ensemble (its members may be shared with other adapters)."""
        return self._ensemble

    @property
    def config(self) -> FusionConfig:
        """The fusion options of every call (before per-call overrides)."""
        return self._ensemble.config

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._ensemble.context_window or DEFAULT_CONTEXT_WINDOW,
            num_output=self._ensemble.config.max_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self._ensemble.name,
        )

    # -- translation helpers ----------------------------------------------------------------------

    def _overrides(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        overrides = {k: v for k, v in kwargs.items() if k in FUSION_FIELDS}
        ignored = sorted(set(kwargs) - FUSION_FIELDS)
        if ignored:
            logger.debug("SpecFuseLLM ignores non-fusion keyword argument(s): %s", ", ".join(ignored))
        return overrides

    @staticmethod
    def _prompt_messages(prompt: str) -> list[dict[str, str]]:
        return validate_messages([{"role": "user", "content": prompt}])

    def _segment(self, event: SegmentEvent, span_id: str | None) -> None:
        dispatcher.event(
            SpecFuseSegmentEvent(
                model_name=self._ensemble.name,
                round=event.round,
                text=event.text,
                winners=list(event.winners),
                segment=event.to_dict(),
                span_id=span_id,
            )
        )

    def _finished(self, result: FusionResult, span_id: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Emit the result event; return ``(additional_kwargs, raw)`` for the final response."""
        trace = result.to_dict()
        summary = result.summary()
        dispatcher.event(
            SpecFuseResultEvent(
                model_name=self._ensemble.name, text=result.text, summary=summary, trace=trace, span_id=span_id
            )
        )
        extra = {
            "specfuse": summary,
            "finish_reason": result.finish_reason,
            "completion_tokens": result.output_tokens,
            "model_name": self._ensemble.name,
        }
        return extra, trace

    @staticmethod
    def _segment_kwargs(event: SegmentEvent) -> dict[str, Any]:
        return {"specfuse_segment": {"round": event.round, "winners": list(event.winners)}}

    def _run(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> tuple[FusionResult, dict, dict]:
        span_id = _active_span_id()
        stream = self._ensemble.stream(messages, **self._overrides(kwargs))
        with stream:
            for event in stream:
                self._segment(event, span_id)
        result = stream.result
        extra, raw = self._finished(result, span_id)
        return result, extra, raw

    async def _arun(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> tuple[FusionResult, dict, dict]:
        span_id = _active_span_id()
        stream = self._ensemble.astream(messages, **self._overrides(kwargs))
        async with stream:
            async for event in stream:
                self._segment(event, span_id)
        result = stream.result
        extra, raw = self._finished(result, span_id)
        return result, extra, raw

    def _iter(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> Generator[tuple[Any, ...], None, None]:
        """``(delta, text, additional_kwargs, raw)`` per accepted segment; the last carries the summary."""
        span_id = _active_span_id()
        stream = self._ensemble.stream(messages, **self._overrides(kwargs))

        def gen() -> Generator[tuple[Any, ...], None, None]:
            text = ""
            with stream:
                for event in stream:
                    text += event.text
                    self._segment(event, span_id)
                    if event.finish_reason is None:
                        yield event.text, text, self._segment_kwargs(event), event.to_dict()
                        continue
                    for _ in stream:  # already finished: this only completes the result
                        pass
                    extra, raw = self._finished(stream.result, span_id)
                    yield event.text, text, {**self._segment_kwargs(event), **extra}, raw

        return gen()

    def _aiter(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> AsyncGenerator[tuple[Any, ...], None]:
        span_id = _active_span_id()
        stream = self._ensemble.astream(messages, **self._overrides(kwargs))

        async def gen() -> AsyncGenerator[tuple[Any, ...], None]:
            text = ""
            async with stream:
                async for event in stream:
                    text += event.text
                    self._segment(event, span_id)
                    if event.finish_reason is None:
                        yield event.text, text, self._segment_kwargs(event), event.to_dict()
                        continue
                    async for _ in stream:
                        pass
                    extra, raw = self._finished(stream.result, span_id)
                    yield event.text, text, {**self._segment_kwargs(event), **extra}, raw

        return gen()

    @staticmethod
    def _chat_response(text: str, extra: dict, raw: dict, delta: str | None = None) -> ChatResponse:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        return ChatResponse(message=message, delta=delta, raw=raw, additional_kwargs=extra)

    # -- the eight LlamaIndex methods ---------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result, extra, raw = self._run(to_specfuse_messages(messages), kwargs)
        return self._chat_response(result.text, extra, raw)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result, extra, raw = self._run(self._prompt_messages(prompt), kwargs)
        return CompletionResponse(text=result.text, raw=raw, additional_kwargs=extra)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        parts = self._iter(to_specfuse_messages(messages), kwargs)

        def gen() -> ChatResponseGen:
            with closing(parts):
                for delta, text, extra, raw in parts:
                    yield self._chat_response(text, extra, raw, delta)

        return gen()

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        parts = self._iter(self._prompt_messages(prompt), kwargs)

        def gen() -> CompletionResponseGen:
            with closing(parts):
                for delta, text, extra, raw in parts:
                    yield CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=extra)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result, extra, raw = await self._arun(to_specfuse_messages(messages), kwargs)
        return self._chat_response(result.text, extra, raw)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result, extra, raw = await self._arun(self._prompt_messages(prompt), kwargs)
        return CompletionResponse(text=result.text, raw=raw, additional_kwargs=extra)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        parts = self._aiter(to_specfuse_messages(messages), kwargs)

        async def gen() -> ChatResponseAsyncGen:
            async with aclosing(parts):
                async for delta, text, extra, raw in parts:
                    yield self._chat_response(text, extra, raw, delta)

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        parts = self._aiter(self._prompt_messages(prompt), kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async with aclosing(parts):
                async for delta, text, extra, raw in parts:
                    yield CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=extra)

        return gen()


def _active_span_id() -> str | None:
    from llama_index.core.instrumentation.span import active_span_id

    return active_span_id.get()
