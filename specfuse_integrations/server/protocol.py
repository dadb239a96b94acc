"""OpenAI chat-completions wire types <-> specfuse_core requests and results (conversion only).

Requests are parsed from raw bytes here so that every failure names its field and gets OpenAI's
error object; responses, stream chunks and usage are built from :class:`FusionResult` and
:class:`SegmentEvent` without touching any fusion logic.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specfuse_core import FusionResult, SegmentEvent
from specfuse_core.config import fusion_option_names
from specfuse_core.tools import TOOL_OPTIONS

OPENAI_FUSION_OPTIONS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop"})
"""FusionConfig fields that OpenAI's own request fields carry."""

REQUEST_FUSION_OPTIONS = fusion_option_names(per_request=True) - OPENAI_FUSION_OPTIONS
"""FusionConfig fields a request may set through the non-OpenAI ``specfuse`` object. Server-wide state
(``keep_weights``, ``keep_exits``) stays with the operator (``specfuse serve`` flags)."""

MAX_STOP_STRINGS = 4  # OpenAI's own limit


class APIError(Exception):
    """An error answered with OpenAI's error object: ``{"error": {message, type, param, code}}``."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "service_unavailable",
    }

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = APIError.TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` that specfuse reads; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Any] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    specfuse: dict[str, Any] | None = None


@dataclass
class EngineRequest:
    """What the engine needs: messages, per-call overrides, and how to answer."""

    model: str
    messages: list[dict[str, Any]]
    overrides: dict[str, Any]
    stream: bool
    include_usage: bool
    tools: dict[str, Any] = field(default_factory=dict)


def parse_body(raw: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity, no lone surrogates), or a 400 that says why."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {error.start})", code="invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise APIError(400, f"the request body is not valid JSON: {_short(error)}", code="invalid_json") from None
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request body contains an unpaired surrogate escape", code="invalid_encoding") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _short(error: BaseException, limit: int = 200) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def to_engine_request(body: dict[str, Any]) -> EngineRequest:
    """Validate an OpenAI chat request and translate it into the engine's terms."""
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise APIError(400, f"invalid value for {param!r}: {first['msg']}", param=param) from None
    if request.n not in (None, 1):
        raise APIError(400, "only n=1 is supported: the ensemble produces one answer per request", param="n")
    if request.logprobs or request.top_logprobs:
        raise APIError(400, "logprobs are not supported by specfuse", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise APIError(400, f"{name} is not supported by specfuse", param=name)
    if request.logit_bias:
        raise APIError(400, "logit_bias is not supported by specfuse", param="logit_bias")
    tools = _tool_fields(request)
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        if request.max_tokens != request.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree; send one", param="max_tokens")
    overrides: dict[str, Any] = {
        "max_tokens": request.max_completion_tokens or request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
    }
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise APIError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
        overrides["stop"] = tuple(stops)
    for name, value in (request.specfuse or {}).items():
        if name not in REQUEST_FUSION_OPTIONS:
            known = ", ".join(sorted(REQUEST_FUSION_OPTIONS))
            raise APIError(400, f"unknown specfuse option {name!r}; known: {known}", param=f"specfuse.{name}")
        overrides[name] = value
    return EngineRequest(
        model=request.model,
        messages=request.messages,
        overrides={k: v for k, v in overrides.items() if v is not None},
        stream=bool(request.stream),
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        tools=tools,
    )


def _tool_fields(request: ChatCompletionRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` as sent; the core
    validates them and applies the no-tools rule."""
    return {name: getattr(request, name) for name in TOOL_OPTIONS if getattr(request, name) is not None}


# -- responses --------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def now() -> int:
    return int(time.time())


def usage(result: FusionResult) -> dict[str, int]:
    """OpenAI usage, as every front door reports it (:attr:`FusionResult.token_usage`)."""
    return result.token_usage.to_openai()


def completion(completion_id: str, created: int, model: str, result: FusionResult) -> dict[str, Any]:
    """A ``chat.completion`` object; ``specfuse`` is :meth:`FusionResult.summary`, as in the adapters."""
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in result.tool_calls]
        message["content"] = result.content or None
    choice = {"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}
    return _envelope(completion_id, created, model, "chat.completion", [choice],
                     usage=usage(result), specfuse=finite(result.summary()))  # fmt: skip


def _envelope(completion_id: str, created: int, model: str, kind: str, choices: list[Any], **more: Any) -> dict[str, Any]:
    return {"id": completion_id, "object": kind, "created": created, "model": model, "choices": choices, **more}


def segment(event: SegmentEvent) -> dict[str, Any]:
    """The per-chunk ``specfuse`` object: round, winners, candidates with every scorer's score, exits."""
    return finite(event.to_dict())


def chunk(
    completion_id: str,
    created: int,
    model: str,
    event: SegmentEvent,
    *,
    first: bool,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` for one accepted segment."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    calls = [d.to_openai() for d in event.tool_calls]
    if event.content or not calls:
        delta["content"] = event.content
    if calls:
        delta["tool_calls"] = calls
    info = segment(event)
    if summary is not None:
        info["summary"] = finite(summary)
    choice = {"index": 0, "delta": delta, "finish_reason": event.finish_reason, "logprobs": None}
    return _envelope(completion_id, created, model, "chat.completion.chunk", [choice], specfuse=info)


def usage_chunk(completion_id: str, created: int, model: str, result: FusionResult) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    return _envelope(completion_id, created, model, "chat.completion.chunk", [], usage=usage(result))


def sse(payload: dict[str, Any] | Literal["[DONE]"]) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def finite(value: Any) -> Any:
    """JSON for browsers: non-finite floats (e.g. a -inf log-probability) become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def model_list(model_id: str, members: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": model_id, "object": "model", "created": created, "owned_by": "specfuse", "members": members},
    ]}  # fmt: skip
