"""LangChain adapter: a specfuse ensemble behind LangChain's ``BaseChatModel`` interface.

>>> from specfuse_integrations.langchain import SpecFuseChatModel
>>> llm = SpecFuseChatModel(temperature=0, max_tokens=64)        # the default ensemble
>>> llm.invoke("What is the capital of France?").content

This module is a thin translation layer: LangChain messages become specfuse message dicts
(validated by :func:`specfuse_core.messages.validate_messages`), options become
:class:`specfuse_core.FusionConfig` overrides, LangChain tools become OpenAI function tools, and
every accepted segment becomes one streamed ``AIMessageChunk`` (with ``tool_call_chunks``) plus one
``specfuse_segment`` custom callback event. Tool calls and structured output are parsed and
grammar-constrained by ``specfuse_core``; this module only converts its ``ToolCall`` /
``ToolCallDelta`` objects into LangChain's. All fusion logic lives in ``specfuse_core``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, Optional

try:
    from langchain_core.callbacks import (
        AsyncCallbackManager,
        AsyncCallbackManagerForLLMRun,
        BaseCallbackHandler,
        BaseCallbackManager,
        CallbackManager,
        CallbackManagerForLLMRun,
        adispatch_custom_event,
        dispatch_custom_event,
    )
    from langchain_core.exceptions import ContextOverflowError, ModelInvalidRequestError
    from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
    from langchain_core.language_models.model_profile import ModelProfile
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.messages.tool import ToolCallChunk, invalid_tool_call, tool_call, tool_call_chunk
    from langchain_core.output_parsers import (
        JsonOutputKeyToolsParser,
        JsonOutputParser,
        PydanticOutputParser,
        PydanticToolsParser,
    )
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough, ensure_config
    from langchain_core.tools import BaseTool
    from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
    from langchain_core.utils.pydantic import is_basemodel_subclass
    from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, create_model, model_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "specfuse_integrations.langchain needs the 'langchain' extra (langchain-core): "
        "install it with  pip install 'specfuse[langchain]'"
    ) from exc

from specfuse_core import (
    DEFAULT_MEMBERS,
    ConfigError,
    Ensemble,
    FusionConfig,
    FusionResult,
    InvalidRequestError,
    MemberError,
    SegmentEvent,
)
from specfuse_core.config import FusionOption, fusion_options
from specfuse_core.errors import ContextLengthError, RequestLimitError
from specfuse_core.messages import validate_messages
from specfuse_core.tools import TOOL_OPTIONS, ToolCallAccumulator, ToolCallDelta, tool_request

__all__ = [
    "SEGMENT_EVENT",
    "ChatSpecFuse",
    "SpecFuseChatModel",
    "SpecFuseContextOverflowError",
    "SpecFuseRequestLimitError",
    "to_specfuse_messages",
]

SEGMENT_EVENT = "specfuse_segment"
"""Name of the custom callback event dispatched once per accepted segment."""

_STANDARD_FIELDS = frozenset({"temperature", "max_tokens", "top_p", "seed", "stop"})
"""Fusion options that LangChain names as standard chat-model parameters (declared below with its aliases)."""

_RENAMED_FIELDS = {"cache": "kv_cache"}
"""Fusion options whose name is taken by a LangChain option (``cache`` is its response cache)."""


def _field_name(option: FusionOption) -> str:
    return _RENAMED_FIELDS.get(option.name, option.name)


_FUSION_FIELDS: dict[str, str] = {_field_name(o): o.name for o in fusion_options()}
"""SpecFuseChatModel field -> FusionConfig field, for every fusion option."""

_ROLE_OF_TYPE = {"system": "system", "human": "user", "ai": "assistant"}

_DROPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking", "reasoning", "invalid_tool_call"})
"""Content blocks of a past assistant turn that members never see: another model's private reasoning
(providers drop it from later turns too) and calls that could not be parsed (they have no arguments
to show and no tool message can answer them)."""


def _assistant_content(content: str | list[Any]) -> str | list[Any]:
    """A past assistant turn's content without reasoning or invalid-call blocks."""
    if isinstance(content, str):
        return content
    return [b for b in content if not (isinstance(b, Mapping) and b.get("type") in _DROPPED_ASSISTANT_BLOCKS)]


def _assistant_calls(message: AIMessage, index: int) -> list[dict[str, Any]]:
    """``{"id", "name", "arguments"}`` of an AIMessage's parsed tool calls (ids made up when missing)."""
    return [
        {"id": call.get("id") or f"call_{index}_{k}", "name": call["name"], "arguments": call.get("args") or {}}
        for k, call in enumerate(message.tool_calls)
    ]


def _tool_content(message: ToolMessage) -> str | list[Any]:
    """A ToolMessage's content as specfuse accepts it: text, or text blocks (``status="error"`` says so)."""
    content: str | list[Any] = message.content
    if message.status != "error":
        return content
    text = content if isinstance(content, str) else ""
    if text.lstrip().lower().startswith("error"):
        return content
    if isinstance(content, str):
        return f"Error: {content}"
    return [{"type": "text", "text": "Error: "}, *content]


def to_specfuse_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Translate LangChain messages into specfuse message dicts.

    - ``SystemMessage``/``HumanMessage``/``AIMessage``/``ChatMessage`` become ``{"role", "content"}``;
    - an ``AIMessage`` with ``tool_calls`` adds ``tool_calls=[{"id", "name", "arguments"}]``; list
      content may hold ``tool_use`` blocks (Anthropic style) and reasoning blocks, which are dropped
      (its ``invalid_tool_calls`` are dropped too: no tool message can answer them);
    - a ``ToolMessage`` becomes ``{"role": "tool", "content", "tool_call_id"}``; with
      ``status="error"`` its text starts with ``Error:``.

    Content is otherwise passed through unchanged so that
    :func:`specfuse_core.messages.validate_messages` rejects image, audio or file blocks with an
    error that names the block type. ``FunctionMessage`` (no call id) and unknown message types
    raise :class:`InvalidRequestError`.
    """
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            converted.append({"role": "tool", "content": _tool_content(message), "tool_call_id": message.tool_call_id})
            continue
        if isinstance(message, FunctionMessage):
            raise InvalidRequestError(
                f"message {index}: FunctionMessage (the legacy OpenAI function-call reply) is not supported; "
                "answer a tool call with a ToolMessage and its tool_call_id"
            )
        if isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _assistant_content(message.content)}
            if message.tool_calls:
                entry["tool_calls"] = _assistant_calls(message, index)
            converted.append(entry)
            continue
        if isinstance(message, ChatMessage):
            role = message.role
        elif isinstance(message, (SystemMessage, HumanMessage)):
            role = _ROLE_OF_TYPE[message.type]
        else:
            raise InvalidRequestError(
                f"message {index}: unsupported message type {type(message).__name__}; "
                "expected SystemMessage, HumanMessage, AIMessage, ToolMessage or ChatMessage"
            )
        converted.append({"role": role, "content": message.content})
    return converted


class SpecFuseContextOverflowError(ContextLengthError, ContextOverflowError):
    """A member cannot hold the request: specfuse's :class:`ContextLengthError` and LangChain's
    ``ContextOverflowError`` at once, so code that catches either keeps working."""


class SpecFuseRequestLimitError(RequestLimitError, ModelInvalidRequestError):
    """A request over the ensemble's limits: :class:`RequestLimitError` and LangChain's
    ``ModelInvalidRequestError``."""


@contextlib.contextmanager
def _as_langchain_errors() -> Iterator[None]:
    """Raise the up-front checks' errors as LangChain's error types (subclasses of specfuse's own)."""
    try:
        yield
    except ContextLengthError as error:
        raise SpecFuseContextOverflowError(str(error), error.overflows) from None
    except RequestLimitError as error:
        raise SpecFuseRequestLimitError(str(error), limit=error.limit, param=error.param) from None


def _tool_call_chunks(deltas: Sequence[ToolCallDelta]) -> list[ToolCallChunk]:
    """One LangChain ``tool_call_chunk`` per call of a segment (a segment may carry several deltas of
    one call: its name and its first argument text)."""
    return [
        tool_call_chunk(name=d.name, args=d.arguments, id=d.id, index=d.index) for d in ToolCallAccumulator(deltas).calls
    ]


def _response_format(response_format: Any, strict: bool | None) -> dict[str, Any]:
    """An OpenAI ``response_format`` dict from one, or from a schema (Pydantic class, TypedDict, JSON schema)."""
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_schema", "json_object", "text"):
        return dict(response_format)
    json_schema: dict[str, Any] = {
        "name": _schema_name(response_format),
        "schema": convert_to_json_schema(response_format),
    }
    if strict is not None:
        json_schema["strict"] = strict
    return {"type": "json_schema", "json_schema": json_schema}


def _schema_name(schema: Any) -> str:
    """The name LangChain gives a schema's tool (its title or class name), ``response`` if it has none."""
    try:
        return str(convert_to_openai_tool(schema)["function"]["name"])
    except (ValueError, TypeError, KeyError):
        return "response"


def _name_of_spec(spec: str) -> str:
    source = spec.strip().partition("::")[0].rstrip("/\\")
    name = Path(source).name or source
    return name.removesuffix(".gguf")


def _parse_model(model: str) -> list[str]:
    """A per-call ``model``: member specs joined with ``+`` (``specfuse(a+b)`` is accepted too)."""
    text = model.strip()
    if text.startswith("specfuse(") and text.endswith(")"):
        text = text[len("specfuse(") : -1]
    specs = [s.strip() for s in text.split("+") if s.strip()]
    if not specs:
        raise ConfigError(f"model={model!r} names no member")
    return specs


class _RunCapture(BaseCallbackHandler):
    """Learns the run id of a ``stream``/``astream`` call, or of an ``invoke``/``ainvoke`` that streams
    (``streaming=True``).

    LangChain does not hand ``_stream``/``_astream`` their run manager, so without this the
    per-segment custom events could not be attributed to the chat model's own run.
    """

    run_inline = True

    def __init__(self, config: RunnableConfig) -> None:
        self.config = config
        self.run_id: Any = None

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any) -> None:
        if self.run_id is None:
            self.run_id = run_id


_CURRENT_RUN: contextvars.ContextVar[_RunCapture | None] = contextvars.ContextVar("specfuse_run", default=None)


def _with_capture(config: RunnableConfig | None) -> tuple[RunnableConfig, _RunCapture]:
    config = ensure_config(config)
    capture = _RunCapture(config)
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(capture, inherit=False)
    else:
        callbacks = [*(callbacks or []), capture]
    return {**config, "callbacks": callbacks}, capture


def _manager_config(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun, manager_class: type
) -> dict[str, Any]:
    manager = manager_class(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )
    return {"callbacks": manager}


class _SpecFuseChatModel(BaseChatModel):
    """A SpecFuse ensemble of several LLMs as a LangChain chat model.

    Construction:

    - ``SpecFuseChatModel()``: the default ensemble (:data:`specfuse_core.DEFAULT_MEMBERS`);
    - ``SpecFuseChatModel(members=[...], segment_tokens=..., score_mode=..., ...)``: built from
      member specs (preset names, directories, Hub ids, ``.gguf`` files);
    - ``SpecFuseChatModel(ensemble=ens)``: wraps an :class:`~specfuse_core.Ensemble` you built.

    Models load lazily on first use and are shared between instances with the same members, so
    ``bind(...)`` and ``with_config(...)`` never load them again. Options left at ``None`` keep
    the ensemble's :class:`~specfuse_core.FusionConfig` value. A per-call ``model="a+b"`` runs the
    request on an ensemble of those member specs instead (loaded members are shared).

    Streaming yields one ``AIMessageChunk`` per accepted segment; every segment also dispatches a
    ``specfuse_segment`` custom callback event whose data is that segment's trace
    (:meth:`specfuse_core.SegmentEvent.to_dict`), visible in ``astream_events``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    members: list[str] | None = None
    """Member specs; ``None`` means the default ensemble. Ignored when ``ensemble`` is given."""
    ensemble: Any = Field(default=None, exclude=True)
    """An already built :class:`specfuse_core.Ensemble` to wrap."""
    member_options: dict[str, Any] = Field(default_factory=dict)
    """Options for every member built from ``members`` (``device``, ``dtype``, ...)."""

    # Standard LangChain parameters.
    temperature: float | None = None
    """Draft sampling temperature; ``0`` is greedy, ``None`` the SpecFuse default (0.6, top_p 0.9)."""
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    """Answer budget in the first member's tokens (``None``: ``FusionConfig`` default, 512)."""
    top_p: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop strings: the answer is cut before the first one."""
    timeout: float | None = None
    """Seconds a request may take; checked after every segment, then ``TimeoutError``."""
    max_retries: int = 2
    """Retries of a request that failed with a member error before producing any text."""
    streaming: bool = False
    """Whether ``invoke`` streams internally (callbacks then see every segment as a token)."""
    seed: int | None = None
    api_key: SecretStr | None = None
    """Unused by local members; accepted so code that always passes a key keeps working."""
    parallel_tool_calls: bool | None = None
    """Default of ``bind_tools(parallel_tool_calls=...)``: ``False`` allows at most one tool call per
    answer; ``None`` leaves it to the ensemble (several allowed; a call never repeats an earlier one)."""

    # Every other FusionConfig option is a field too, ``None`` keeping the ensemble's own value: they
    # are added from FusionConfig's declarations below (``cache`` as ``kv_cache``).

    _ensemble: Ensemble | None = PrivateAttr(default=None)
    _overrides: dict[tuple[str, ...], Ensemble] = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check(self) -> _SpecFuseChatModel:
        if self.ensemble is not None and not isinstance(self.ensemble, Ensemble):
            raise ConfigError(f"ensemble must be a specfuse_core.Ensemble, got {type(self.ensemble).__name__}")
        if self.members is not None and not self.members:
            raise ConfigError("members is empty: give at least one member spec, or None for the default ensemble")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {self.timeout!r}")
        FusionConfig().replace(**self._fusion_overrides())  # validate options now, without loading models
        return self

    # -- LangChain identity ----------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "specfuse"

    @property
    def ensemble_name(self) -> str:
        """A readable name, ``specfuse(member+member)``, without loading anything."""
        ensemble = self.ensemble or self._ensemble
        if ensemble is not None:
            return ensemble.name
        specs = DEFAULT_MEMBERS if self.members is None else self.members
        return "specfuse(" + "+".join(_name_of_spec(s) for s in specs) + ")"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.ensemble_name, **self._fusion_overrides()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="specfuse",
            ls_model_name=str(kwargs.get("model") or self.ensemble_name),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What the ensemble can do, for code that asks (``create_agent`` picks native structured
        output when ``structured_output`` is true)."""
        return ModelProfile(
            text_inputs=True,
            image_inputs=False,
            image_url_inputs=False,
            pdf_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            image_tool_message=False,
            pdf_tool_message=False,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
        )

    # -- tools and structured output -------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        response_format: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` offered on every call (a ``RunnableBinding``).

        Args:
            tools: LangChain tools, functions, Pydantic models, TypedDicts, JSON schemas or OpenAI
                tool dicts (converted by ``convert_to_openai_tool``).
            tool_choice: ``None``/``"auto"`` (the ensemble decides), ``"any"``/``"required"``/``True``
                (at least one call), ``"none"`` (no call), a tool's name, or
                ``{"type": "function", "function": {"name": ...}}`` (that tool).
            parallel_tool_calls: ``False``: at most one call per answer.
            strict: accepted for compatibility; arguments always follow the tool's schema, because
                every member drafts them under a grammar compiled from it.
            response_format: an OpenAI ``response_format`` dict, or a schema (Pydantic class,
                TypedDict, JSON schema) that the final answer must follow.
            kwargs: any other per-call option (``FusionConfig`` fields, ``stop``, ...).

        Invalid combinations (an unknown tool name in ``tool_choice``, ``response_format`` with a
        forced call) raise :class:`InvalidRequestError` when the binding is invoked.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            kwargs["strict"] = strict
        if response_format is not None:
            kwargs["response_format"] = _response_format(response_format, strict)
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """This model answering with an object of ``schema`` (a Pydantic instance, or a dict).

        Args:
            schema: a Pydantic class (the result is an instance), a TypedDict, a JSON schema or an
                OpenAI tool dict (the result is a dict). May be ``None`` only with ``json_mode``.
            method: ``"json_schema"`` (default): the whole answer is decoded under the schema's
                grammar; ``"function_calling"``: the schema becomes a tool the answer must call;
                ``"json_mode"``: a JSON object; with a ``schema`` the grammar enforces it too (an
                object of the schema is JSON, and the parser needs one), without one any object
                (say in the prompt which keys you want).
            include_raw: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
                instead of raising when parsing fails.
            strict: accepted for compatibility; the grammar always enforces the schema.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema} if schema is not None else None
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = _schema_name(schema)
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                parallel_tool_calls=False,
                strict=strict,
                ls_structured_output_format=trace,
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            response_format = _response_format(schema, strict) if schema is not None else {"type": "json_object"}
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        else:
            raise ValueError(f"unknown method {method!r}: expected 'json_schema', 'function_calling' or 'json_mode'")
        if not include_raw:
            return llm | parser
        parse_or_none = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks([RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parse_or_none

    # -- ensemble and options --------------------------------------------------------------------

    def get_ensemble(self, model: str | None = None) -> Ensemble:
        """The ensemble this model runs (built on first use), or the one a per-call ``model`` names."""
        with self._lock:
            if model is not None:
                specs = tuple(_parse_model(model))
                if specs not in self._overrides:
                    self._overrides[specs] = Ensemble.from_specs(list(specs), share=True, **self.member_options)
                return self._overrides[specs]
            if self.ensemble is not None:
                return self.ensemble
            if self._ensemble is None:
                self._ensemble = Ensemble.from_specs(self.members, share=True, **self.member_options)
            return self._ensemble

    def _fusion_overrides(self) -> dict[str, Any]:
        overrides = {target: getattr(self, name) for name, target in _FUSION_FIELDS.items()}
        overrides["stop"] = tuple(self.stop) if self.stop else None
        return {k: v for k, v in overrides.items() if v is not None}

    def _call_overrides(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """FusionConfig overrides and tool options of one call (``bind``/``bind_tools`` kwargs included).

        ``strict`` is accepted and needs nothing: tool arguments and ``response_format`` answers are
        always decoded under the schema's grammar.
        """
        overrides = self._fusion_overrides()
        for name, value in kwargs.items():
            if name in ("model", "timeout", "strict") or name.startswith("ls_") or value is None:
                continue
            if name in TOOL_OPTIONS:
                overrides[name] = value
                continue
            if name == "stop":
                stop = stop or value
                continue
            if name not in _FUSION_FIELDS:
                known = ", ".join(sorted([*_FUSION_FIELDS, *TOOL_OPTIONS]))
                raise ConfigError(f"unknown option {name!r} for SpecFuseChatModel; known: {known}")
            overrides[_FUSION_FIELDS[name]] = value
        if stop:
            overrides["stop"] = tuple([stop] if isinstance(stop, str) else stop)
        if self.parallel_tool_calls is not None and overrides.get("tools"):
            overrides.setdefault("parallel_tool_calls", self.parallel_tool_calls)
        return overrides

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Ensemble, list[dict[str, Any]], dict[str, Any], float | None]:
        request = validate_messages(to_specfuse_messages(messages))  # before any model loads
        overrides = self._call_overrides(stop, kwargs)
        tool_request(**{k: overrides[k] for k in TOOL_OPTIONS if k in overrides})  # likewise
        timeout = kwargs.get("timeout", self.timeout)
        return self.get_ensemble(kwargs.get("model")), request, overrides, timeout

    # -- results ---------------------------------------------------------------------------------

    @staticmethod
    def _usage(result: FusionResult) -> UsageMetadata:
        usage = result.token_usage
        return UsageMetadata(
            input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
        )

    @staticmethod
    def _response_metadata(ensemble: Ensemble, result: FusionResult) -> dict[str, Any]:
        return {
            "model_name": ensemble.name,
            "model_provider": "specfuse",
            "finish_reason": result.finish_reason,
            "specfuse": result.summary(),
        }

    def _chat_result(self, ensemble: Ensemble, result: FusionResult) -> ChatResult:
        message = AIMessage(
            content=result.content,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in result.tool_calls],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
                for c in result.invalid_tool_calls
            ],
            usage_metadata=self._usage(result),
            response_metadata=self._response_metadata(ensemble, result),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})],
            llm_output={"model_name": ensemble.name, "specfuse": result.summary()},
        )

    def _event_config(self, run_manager: Any, manager_class: type) -> dict[str, Any] | None:
        """Callbacks that attribute a segment event to this chat model's run (``None``: no run)."""
        if run_manager is not None:
            return _manager_config(run_manager, manager_class)
        capture = _CURRENT_RUN.get()
        if capture is None or capture.run_id is None:
            return None
        config = capture.config
        manager = manager_class.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        manager.parent_run_id = capture.run_id
        return {"callbacks": manager}

    # -- entry points wrapped only to learn the run id for the segment events ----------------------

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> AIMessage:
        config, capture = _with_capture(config)
        token = _CURRENT_RUN.set(capture)
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _CURRENT_RUN.reset(token)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> AIMessage:
        config, capture = _with_capture(config)
        token = _CURRENT_RUN.set(capture)
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _CURRENT_RUN.reset(token)

    def stream(
        self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        config, capture = _with_capture(config)
        inner = super().stream(input, config, stop=stop, **kwargs)
        try:
            while True:
                token = _CURRENT_RUN.set(capture)
                try:
                    chunk = next(inner)
                except StopIteration:
                    return
                finally:
                    _CURRENT_RUN.reset(token)
                yield chunk
        finally:
            inner.close()

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        config, capture = _with_capture(config)
        inner = super().astream(input, config, stop=stop, **kwargs)
        try:
            while True:
                token = _CURRENT_RUN.set(capture)
                try:
                    chunk = await inner.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    _CURRENT_RUN.reset(token)
                yield chunk
        finally:
            await inner.aclose()

    @staticmethod
    def _check_time(start: float, timeout: float | None) -> None:
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"specfuse request took longer than timeout={timeout}s")

    # -- sync ------------------------------------------------------------------------------------

    def _run(
        self,
        ensemble: Ensemble,
        request: list[dict[str, Any]],
        overrides: dict[str, Any],
        timeout: float | None,
        run_manager: CallbackManagerForLLMRun | None,
    ) -> Iterator[SegmentEvent]:
        """Run one request; yield its events (the last one carries the result)."""
        start = time.monotonic()
        with _as_langchain_errors():
            stream = ensemble.stream(request, **overrides)
            stream.check()
        try:
            for event in stream:
                config = self._event_config(run_manager, CallbackManager)
                if config is not None:
                    dispatch_custom_event(SEGMENT_EVENT, event.to_dict(), config=config)
                if event.result is None:
                    self._check_time(start, timeout)
                yield event
        finally:
            stream.close()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ensemble, request, overrides, timeout = self._prepare(messages, stop, kwargs)
        for attempt in range(self.max_retries + 1):
            try:
                for event in self._run(ensemble, request, overrides, timeout, run_manager):
                    if event.result is not None:
                        return self._chat_result(ensemble, event.result)
            except MemberError:
                if attempt >= self.max_retries:
                    raise
        raise RuntimeError("specfuse stream ended without a result")  # pragma: no cover

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        ensemble, request, overrides, timeout = self._prepare(messages, stop, kwargs)
        for event in self._run(ensemble, request, overrides, timeout, run_manager):
            chunk = self._chunk(ensemble, event)
            if run_manager is not None:
                run_manager.on_llm_new_token(event.content, chunk=chunk)
            yield chunk

    def _chunk(self, ensemble: Ensemble, event: SegmentEvent) -> ChatGenerationChunk:
        """One segment as a chunk: its content delta and its tool-call pieces (summed, they give the
        same message as ``invoke``)."""
        calls = _tool_call_chunks(event.tool_calls)
        result = event.result
        if result is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=event.content, tool_call_chunks=calls))
        message = AIMessageChunk(
            content=event.content,
            tool_call_chunks=calls,
            usage_metadata=self._usage(result),
            response_metadata=self._response_metadata(ensemble, result),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": result.finish_reason})

    # -- async -----------------------------------------------------------------------------------

    async def _arun(
        self,
        ensemble: Ensemble,
        request: list[dict[str, Any]],
        overrides: dict[str, Any],
        timeout: float | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
    ) -> AsyncIterator[SegmentEvent]:
        start = time.monotonic()
        with _as_langchain_errors():
            stream = ensemble.astream(request, **overrides)
            await stream.check()
        try:
            async for event in stream:
                config = self._event_config(run_manager, AsyncCallbackManager)
                if config is not None:
                    await adispatch_custom_event(SEGMENT_EVENT, event.to_dict(), config=config)
                if event.result is None:
                    self._check_time(start, timeout)
                yield event
        finally:
            await stream.aclose()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        ensemble, request, overrides, timeout = self._prepare(messages, stop, kwargs)
        for attempt in range(self.max_retries + 1):
            try:
                async for event in self._arun(ensemble, request, overrides, timeout, run_manager):
                    if event.result is not None:
                        return self._chat_result(ensemble, event.result)
            except MemberError:
                if attempt >= self.max_retries:
                    raise
        raise RuntimeError("specfuse stream ended without a result")  # pragma: no cover

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        ensemble, request, overrides, timeout = self._prepare(messages, stop, kwargs)
        async for event in self._arun(ensemble, request, overrides, timeout, run_manager):
            chunk = self._chunk(ensemble, event)
            if run_manager is not None:
                await run_manager.on_llm_new_token(event.content, chunk=chunk)
            yield chunk


def _fusion_fields() -> dict[str, Any]:
    """A pydantic field for every fusion option without a standard LangChain name: ``None`` by default."""
    return {
        _field_name(o): (Optional[o.annotation], Field(default=None, description=o.help))  # noqa: UP045
        for o in fusion_options()
        if o.name not in _STANDARD_FIELDS
    }


SpecFuseChatModel = create_model(  # type: ignore[call-overload]
    "SpecFuseChatModel", __base__=_SpecFuseChatModel, __module__=__name__, __doc__=_SpecFuseChatModel.__doc__,
    **_fusion_fields(),
)  # fmt: skip

ChatSpecFuse = SpecFuseChatModel
"""The conventional ``Chat<Provider>`` name of :class:`SpecFuseChatModel`."""
