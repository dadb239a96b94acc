"""LlamaIndex adapter: :class:`SpecFuseLLM`, a ``FunctionCallingLLM`` backed by a specfuse ensemble.

>>> from llama_index.core import Settings
>>> from specfuse_integrations.llama_index import SpecFuseLLM
>>> Settings.llm = SpecFuseLLM(temperature=0)      # the default ensemble; every component now uses it

This module only translates: LlamaIndex messages (text, ``ToolCallBlock``s, tool results) to specfuse
message dicts, LlamaIndex tools to OpenAI function tools, SpecFuse results and segments to LlamaIndex
(streaming) responses with ``ToolCallBlock``s, and the per-segment trace to LlamaIndex
instrumentation events. All fusion logic, the tool-call grammar and the parsing of calls live in
:mod:`specfuse_core`.

Every call emits the standard LLM events (``LLMChatStartEvent`` ... / callback-manager ``LLM`` events)
plus one :class:`SpecFuseSegmentEvent` per accepted segment and one :class:`SpecFuseResultEvent` at the
end, all through the LlamaIndex dispatcher, so an event handler can log which member wrote what.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from contextlib import aclosing, closing
from typing import TYPE_CHECKING, Any

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
        ToolCallBlock,
    )
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.function_calling import FunctionCallingLLM
    from llama_index.core.llms.llm import LLM, ToolSelection
    from llama_index.core.llms.utils import parse_partial_json
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "specfuse_integrations.llama_index needs LlamaIndex: install the 'llama-index' extra, "
        "e.g. pip install 'specfuse[llama-index]'"
    ) from exc

from specfuse_core import Ensemble, FusionConfig, FusionResult, SegmentEvent
from specfuse_core.errors import ConfigError, InvalidRequestError
from specfuse_core.config import fusion_option_names
from specfuse_core.messages import validate_messages
from specfuse_core.tools import TOOL_OPTIONS as _TOOL_OPTIONS
from specfuse_core.tools import ToolCallAccumulator

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = [
    "SpecFuseLLM",
    "SpecFuseResultEvent",
    "SpecFuseSegmentEvent",
    "to_specfuse_messages",
    "to_specfuse_tools",
]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

FUSION_FIELDS: frozenset[str] = fusion_option_names()
"""Keyword arguments that are fusion options (``FusionConfig`` fields)."""

TOOL_OPTIONS: frozenset[str] = frozenset(_TOOL_OPTIONS)
"""Keyword arguments that go to the ensemble as tool / structured-output options."""

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "developer",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
}


# -- instrumentation events ---------------------------------------------------------------------


class SpecFuseSegmentEvent(BaseEvent):
    """One accepted segment of a SpecFuse request: who drafted it, the candidates and the scores.

    ``segment`` is :meth:`specfuse_core.SegmentEvent.to_dict` (round, text, winners, candidates,
    scorers, scores, totals, weights, active, exits, calls, timings, content, tool_calls, ...).
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


# -- request translation ------------------------------------------------------------------------


def _call_dict(call: Any, where: str) -> dict[str, Any]:
    """One tool call from ``additional_kwargs["tool_calls"]`` as a dict the core validates.

    Accepts OpenAI-shaped dicts (``{"id", "function": {"name", "arguments"}}``), core-shaped dicts
    (``{"id", "name", "arguments"}``), :class:`ToolSelection`\\ s and OpenAI SDK objects.
    """
    if isinstance(call, ToolSelection):
        return {"id": call.tool_id, "name": call.tool_name, "arguments": call.tool_kwargs}
    if isinstance(call, Mapping):
        return dict(call)
    if hasattr(call, "model_dump"):  # e.g. openai's ChatCompletionMessageToolCall
        return call.model_dump()
    raise InvalidRequestError(f"{where}: a tool call must be a dict or a ToolSelection, got {type(call).__name__}")


def _assistant_calls(message: ChatMessage, index: int) -> list[dict[str, Any]]:
    """The tool calls of an assistant message: its ``ToolCallBlock``\\ s, else ``additional_kwargs["tool_calls"]``."""
    blocks = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if blocks:
        return [{"id": b.tool_call_id, "name": b.tool_name, "arguments": b.tool_kwargs} for b in blocks]
    raw = message.additional_kwargs.get("tool_calls") or []
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise InvalidRequestError(f"message {index}: additional_kwargs['tool_calls'] must be a list")
    return [_call_dict(call, f"message {index}") for call in raw]


def to_specfuse_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as validated specfuse message dicts.

    - system/user/assistant text becomes ``{"role", "content"}``;
    - an assistant message's ``ToolCallBlock``\\ s (or, without blocks, its
      ``additional_kwargs["tool_calls"]``) become ``tool_calls``;
    - a ``role="tool"`` message becomes a tool result, answering ``additional_kwargs["tool_call_id"]``.

    Raises :class:`specfuse_core.InvalidRequestError` (a ``ValueError``) for images, audio, documents,
    legacy function calls, a tool result that answers no earlier call, and any other non-text content.
    """
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise InvalidRequestError(f"message {index} is a {type(message).__name__}, expected a ChatMessage")
        role = _ROLES.get(MessageRole(message.role))
        if role is None:
            raise InvalidRequestError(
                f"message {index}: role {MessageRole(message.role).value!r} (legacy function results) is not "
                "supported; use role 'tool' with additional_kwargs={'tool_call_id': ...}"
            )
        if message.additional_kwargs.get("function_call"):
            raise InvalidRequestError(
                f"message {index}: legacy function_call is not supported; use ToolCallBlocks (tool calls)"
            )
        parts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, (CachePoint, ThinkingBlock, ToolCallBlock)):
                continue  # provider hints / hidden reasoning: no content; tool calls are read below
            else:
                kind = {ImageBlock: "image", AudioBlock: "audio"}.get(type(block), "non-text")
                raise InvalidRequestError(
                    f"message {index}: {type(block).__name__} ({kind} content) is not supported; "
                    "SpecFuseLLM accepts text content only"
                )
        entry: dict[str, Any] = {"role": role, "content": "".join(parts)}
        if role == "assistant":
            calls = _assistant_calls(message, index)
            if calls:
                entry["tool_calls"] = calls
        elif role == "tool":
            entry["tool_call_id"] = message.additional_kwargs.get("tool_call_id")
        converted.append(entry)
    return validate_messages(converted)


def to_specfuse_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """LlamaIndex tools (``BaseTool``: ``FunctionTool``, ``QueryEngineTool``, ...) as OpenAI function tools.

    OpenAI-shaped dicts pass through unchanged; the core validates them. ``None`` or no tools: ``None``.
    """
    if not tools:
        return None
    converted: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            converted.append(dict(tool))
        elif hasattr(getattr(tool, "metadata", None), "to_openai_tool"):
            converted.append(tool.metadata.to_openai_tool(skip_length_check=True))
        else:
            raise InvalidRequestError(
                f"tools[{index}] is a {type(tool).__name__}: expected a LlamaIndex tool or an OpenAI function tool dict"
            )
    return converted


def _tool_choice(tool_choice: Any, tool_required: bool, has_tools: bool) -> Any:
    """The core ``tool_choice``: an explicit choice wins, except that ``tool_required`` upgrades ``auto``."""
    if tool_required and tool_choice in (None, "auto"):
        return "required"
    if tool_choice is None and has_tools:
        return "auto"
    return tool_choice


# -- response translation -----------------------------------------------------------------------


def _kwargs_of(value: dict[str, Any] | str) -> dict[str, Any]:
    """A ``ToolCallBlock``'s arguments as a dict: partial JSON (while streaming) via LlamaIndex's own parser."""
    if isinstance(value, dict):
        return value
    if not value.strip():
        return {}
    try:
        parsed = parse_partial_json(value)
    except (ValueError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclasses.dataclass
class _Partial:
    """The answer streamed so far: its content, and its tool calls merged by the core's accumulator."""

    content: str = ""
    calls: ToolCallAccumulator = dataclasses.field(default_factory=ToolCallAccumulator)

    def add(self, event: SegmentEvent) -> None:
        self.content += event.content
        self.calls.add(event.tool_calls)

    def blocks(self) -> list[ToolCallBlock]:
        """Calls so far, arguments as the JSON text received (LlamaIndex reads partial JSON)."""
        return [
            ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in self.calls.calls if c.name
        ]


def _final_blocks(result: FusionResult) -> list[ToolCallBlock]:
    return [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments)) for c in result.tool_calls]


def _assistant_message(
    content: str, blocks: Sequence[ToolCallBlock], openai_calls: list[dict[str, Any]] | None = None
) -> ChatMessage:
    """An assistant message: text (if any, or if there are no calls), then one ``ToolCallBlock`` per call."""
    parts: list[Any] = [TextBlock(text=content)] if content or not blocks else []
    parts.extend(blocks)
    extra = {"tool_calls": openai_calls} if openai_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=parts, additional_kwargs=extra)


@dataclasses.dataclass
class _Step:
    """One streamed piece: the content delta and the response so far (final: with the summary)."""

    delta: str
    message: ChatMessage
    extra: dict[str, Any]
    raw: dict[str, Any]


# -- the LLM ------------------------------------------------------------------------------------


class SpecFuseLLM(FunctionCallingLLM):
    """A LlamaIndex function-calling LLM whose answers come from a SpecFuse ensemble.

    ``SpecFuseLLM()`` uses the default ensemble; ``SpecFuseLLM(members=[...], segment_tokens=8, ...)``
    builds one from member specs (loaded members are shared with other adapters and ensembles that
    use the same specs); ``SpecFuseLLM(ensemble=ens)`` wraps an existing :class:`Ensemble`.
    Keyword arguments that are :class:`FusionConfig` fields are fusion options; at call time they
    override per call, e.g. ``llm.complete("Hi", max_tokens=20)``.

    Tool calling (``FunctionAgent``, ``predict_and_call``, ``structured_predict``) runs through the
    ensemble's grammar-constrained drafting: every call the answer holds is valid JSON for its tool.
    Calls arrive as ``ToolCallBlock``\\ s in ``response.message.blocks`` (and OpenAI-shaped in
    ``response.message.additional_kwargs["tool_calls"]``).
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
            shared = Ensemble(ensemble.members, effective, schedule=ensemble.schedule)  # same members, other options
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
            is_function_calling_model=True,
            model_name=self._ensemble.name,
        )

    # -- tool calling (FunctionCallingLLM) ----------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments of a tool request.

        ``tool_choice`` (``"auto"``, ``"required"``, ``"none"``, a tool's name or an OpenAI
        ``{"type": "function", "function": {"name": ...}}``) wins; otherwise ``tool_required=True`` means
        ``"required"`` and no choice means ``"auto"``. ``allow_parallel_tool_calls=False`` lets the
        grammar accept exactly one call.
        """
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        specs = to_specfuse_tools(tools)
        return {
            "messages": messages,
            "tools": specs,
            "tool_choice": _tool_choice(tool_choice, tool_required, bool(specs)),
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first call when parallel calls are not allowed (the grammar already ensures it)."""
        if allow_parallel_tool_calls:
            return response
        message = response.message
        calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
        if len(calls) > 1:
            message.blocks = [b for b in message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]]
            if message.additional_kwargs.get("tool_calls"):
                message.additional_kwargs["tool_calls"] = message.additional_kwargs["tool_calls"][:1]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls of a (possibly partial, streamed) response as ``ToolSelection``\\ s.

        Reads the message's ``ToolCallBlock``\\ s, or ``additional_kwargs["tool_calls"]`` when it has none.
        With ``error_on_no_tool_call`` a response without calls raises ``ValueError``, naming any call
        that could not be parsed (e.g. cut by ``max_tokens``).
        """
        message = response.message
        blocks = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
        if blocks:
            selections = [
                ToolSelection(tool_id=b.tool_call_id or "", tool_name=b.tool_name, tool_kwargs=_kwargs_of(b.tool_kwargs))
                for b in blocks
            ]
        else:
            raw = message.additional_kwargs.get("tool_calls") or []
            calls = validate_messages(
                [{"role": "assistant", "content": "", "tool_calls": [_call_dict(c, "response") for c in raw]}]
            )[0].get("tool_calls", [])
            selections = [ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"]) for c in calls]
        if not selections and error_on_no_tool_call:
            invalid = response.additional_kwargs.get("invalid_tool_calls") or []
            reasons = "; ".join(f"{c.get('name') or '?'}: {c.get('error')}" for c in invalid)
            finish = response.additional_kwargs.get("finish_reason")
            raise ValueError(
                "Expected at least one tool call, but got 0 tool calls"
                + (f" (finish_reason={finish!r})" if finish else "")
                + (f"; invalid calls: {reasons}" if reasons else "")
            )
        return selections

    # -- translation helpers ----------------------------------------------------------------------

    def _overrides(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The per-call options for the ensemble: fusion options plus tool / response-format options."""
        overrides = {k: v for k, v in kwargs.items() if k in FUSION_FIELDS or (k in TOOL_OPTIONS and v is not None)}
        if "tools" in kwargs:
            overrides["tools"] = to_specfuse_tools(kwargs["tools"])  # none: a plain chat (the core's no-tools rule)
        ignored = sorted(set(kwargs) - FUSION_FIELDS - TOOL_OPTIONS)
        if ignored:
            logger.debug("SpecFuseLLM ignores keyword argument(s): %s", ", ".join(ignored))
        return overrides

    @staticmethod
    def _prompt_messages(prompt: str) -> list[dict[str, Any]]:
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
        extra: dict[str, Any] = {
            "specfuse": summary,
            "finish_reason": result.finish_reason,
            **result.token_usage.to_openai(),
            "model_name": self._ensemble.name,
        }
        if result.invalid_tool_calls:
            extra["invalid_tool_calls"] = trace["invalid_tool_calls"]
        return extra, trace

    def _final_message(self, result: FusionResult) -> ChatMessage:
        return _assistant_message(result.content, _final_blocks(result), [c.to_openai() for c in result.tool_calls])

    @staticmethod
    def _segment_kwargs(event: SegmentEvent) -> dict[str, Any]:
        return {"specfuse_segment": {"round": event.round, "winners": list(event.winners)}}

    def _run(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple[FusionResult, dict, dict]:
        span_id = _active_span_id()
        with self._ensemble.stream(messages, **self._overrides(kwargs)) as stream:
            for event in stream:
                self._segment(event, span_id)
                result = event.result
        extra, raw = self._finished(result, span_id)
        return result, extra, raw

    async def _arun(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple[FusionResult, dict, dict]:
        span_id = _active_span_id()
        async with self._ensemble.astream(messages, **self._overrides(kwargs)) as stream:
            async for event in stream:
                self._segment(event, span_id)
                result = event.result
        extra, raw = self._finished(result, span_id)
        return result, extra, raw

    def _step(self, event: SegmentEvent, partial: _Partial, span_id: str | None) -> _Step:
        """The response after one more accepted segment (the final one carries the parsed calls and summary)."""
        partial.add(event)
        self._segment(event, span_id)
        if event.result is None:
            message = _assistant_message(partial.content, partial.blocks())
            return _Step(event.content, message, self._segment_kwargs(event), event.to_dict())
        extra, raw = self._finished(event.result, span_id)
        return _Step(event.content, self._final_message(event.result), {**self._segment_kwargs(event), **extra}, raw)

    def _iter(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> Generator[_Step, None, None]:
        """One :class:`_Step` per accepted segment; the last carries the summary and the parsed calls."""
        span_id = _active_span_id()
        stream = self._ensemble.stream(messages, **self._overrides(kwargs))

        def gen() -> Generator[_Step, None, None]:
            partial = _Partial()
            with stream:
                for event in stream:
                    yield self._step(event, partial, span_id)

        return gen()

    def _aiter(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> AsyncGenerator[_Step, None]:
        span_id = _active_span_id()
        stream = self._ensemble.astream(messages, **self._overrides(kwargs))

        async def gen() -> AsyncGenerator[_Step, None]:
            partial = _Partial()
            async with stream:
                async for event in stream:
                    yield self._step(event, partial, span_id)

        return gen()

    # -- the eight LlamaIndex methods ---------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result, extra, raw = self._run(to_specfuse_messages(messages), kwargs)
        return ChatResponse(message=self._final_message(result), raw=raw, additional_kwargs=extra)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result, extra, raw = self._run(self._prompt_messages(prompt), kwargs)
        return CompletionResponse(text=result.content, raw=raw, additional_kwargs=extra)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        steps = self._iter(to_specfuse_messages(messages), kwargs)

        def gen() -> ChatResponseGen:
            with closing(steps):
                for step in steps:
                    yield ChatResponse(message=step.message, delta=step.delta, raw=step.raw, additional_kwargs=step.extra)

        return gen()

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        steps = self._iter(self._prompt_messages(prompt), kwargs)

        def gen() -> CompletionResponseGen:
            with closing(steps):
                for step in steps:
                    text = step.message.content or ""
                    yield CompletionResponse(text=text, delta=step.delta, raw=step.raw, additional_kwargs=step.extra)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result, extra, raw = await self._arun(to_specfuse_messages(messages), kwargs)
        return ChatResponse(message=self._final_message(result), raw=raw, additional_kwargs=extra)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result, extra, raw = await self._arun(self._prompt_messages(prompt), kwargs)
        return CompletionResponse(text=result.content, raw=raw, additional_kwargs=extra)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        steps = self._aiter(to_specfuse_messages(messages), kwargs)

        async def gen() -> ChatResponseAsyncGen:
            async with aclosing(steps):
                async for step in steps:
                    yield ChatResponse(message=step.message, delta=step.delta, raw=step.raw, additional_kwargs=step.extra)

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        steps = self._aiter(self._prompt_messages(prompt), kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async with aclosing(steps):
                async for step in steps:
                    text = step.message.content or ""
                    yield CompletionResponse(text=text, delta=step.delta, raw=step.raw, additional_kwargs=step.extra)

        return gen()


def _active_span_id() -> str | None:
    from llama_index.core.instrumentation.span import active_span_id

    return active_span_id.get()
