"""Tools and structured output: the request side and the one canonical tool-call syntax.

- :func:`normalize_tools`, :func:`normalize_tool_choice`, :func:`normalize_response_format` turn
  what a caller passes (OpenAI-style dicts, LangChain/LlamaIndex conversions) into one
  :class:`ToolRequest`, with a typed error for anything that cannot work.
- The canonical syntax in the shared answer text is the Hermes/Qwen2.5 form::

      <tool_call>
      {"name": "NAME", "arguments": {...}}
      </tool_call>

  :func:`render_tool_call` writes it (``json.dumps`` defaults, non-ASCII kept), :func:`parse_tool_calls`
  reads a finished answer and :class:`ToolCallStreamParser` reads it segment by segment, holding back
  a partial tag so that no ``<tool_c`` ever leaks into the content.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidRequestError

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

ToolChoiceMode = Literal["auto", "required", "none", "named"]

TOOL_SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
"""The tool instruction of members whose chat template cannot render tools (Qwen2.5's own wording)."""


# -- calls --------------------------------------------------------------------------------------


def new_call_id() -> str:
    """A fresh tool-call id in OpenAI's style (``call_`` + 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call: ``arguments`` is the decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry (arguments as a JSON string)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json()}}


@dataclass(frozen=True)
class InvalidToolCall:
    """A call that could not be parsed (cut by the token budget, or not JSON): never silently dropped."""

    id: str
    name: str | None
    arguments: str
    error: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of the ``index``-th call: first its ``id`` and ``name``, then argument text.

    Concatenating every delta's ``arguments`` of one index gives that call's arguments JSON.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI streaming ``delta.tool_calls`` entry."""
        function: dict[str, Any] = {"arguments": self.arguments}
        entry: dict[str, Any] = {"index": self.index, "function": function}
        if self.id is not None:
            entry["id"] = self.id
            entry["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        return entry


class ToolCallAccumulator:
    """Merges streamed :class:`ToolCallDelta`\\ s by call index into one delta per call.

    Fed one segment's deltas, it gives that segment's pieces one per call (a LangChain chunk); fed a
    whole stream, it gives every call so far with its arguments text (a LlamaIndex partial response).
    """

    def __init__(self, deltas: Iterable[ToolCallDelta] = ()) -> None:
        self._calls: dict[int, ToolCallDelta] = {}
        self.add(deltas)

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        for delta in deltas:
            known = self._calls.get(delta.index)
            if known is None:
                self._calls[delta.index] = delta
            else:
                self._calls[delta.index] = ToolCallDelta(
                    index=delta.index,
                    id=known.id if known.id is not None else delta.id,
                    name=known.name if known.name is not None else delta.name,
                    arguments=known.arguments + delta.arguments,
                )

    @property
    def calls(self) -> list[ToolCallDelta]:
        """One merged delta per call, in call order."""
        return [self._calls[index] for index in sorted(self._calls)]


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The canonical text of one call (what members see in past assistant turns)."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def render_tool_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(render_tool_call(c["name"], c["arguments"]) for c in calls)


def add_missing_call_tag(accepted: str, draft: str) -> str | None:
    """``draft`` in the canonical syntax when it writes a call another way, else ``None``.

    Small models trained on this format (Qwen2.5-Coder-0.5B among them) often open a call with the
    bare ``{"name": "...`` object, or with that object in a Markdown code fence. At the start of the
    answer or of a line, outside any call, such a draft is read as the call it means (the fence
    becomes the tag, and a fence that closes right after a call is dropped), so the shared text
    stays canonical. A draft that stops inside the object's first key (``{"na``, ``{\n  "name":``)
    is recognised too: its budget cut it before the name.
    """
    if inside_call(accepted) or (accepted.strip() and not accepted.endswith(("\n", CALL_CLOSE))):
        return None
    if accepted.endswith(CALL_CLOSE):
        closing = _CLOSING_FENCE.match(draft)
        return draft[closing.end() :] if closing else None
    opening = _OPENING_FENCE.match(draft)
    body = draft[opening.end() :] if opening else draft.lstrip()
    bare = _BARE_CALL.match(body)
    if bare:
        return CALL_OPEN + '\n{"name": "' + body[bare.end() :]
    # A draft cut by its token budget inside the call object's first key (``{\n  "name":``).
    compact = re.sub(r"\s+", "", body)
    if len(compact) >= len('{"n') and '{"name":"'.startswith(compact):
        return CALL_OPEN + "\n" + compact
    return None


def inside_call(text: str) -> bool:
    """Whether ``text`` ends inside an open (not yet closed) tool call."""
    return text.rfind(CALL_OPEN) > text.rfind(CALL_CLOSE)


def opens_call(accepted: str, segment: str) -> bool:
    """Whether ``segment``, appended to ``accepted`` outside any call, starts a new tool call: it
    holds the opening tag, or ends in at least its first two characters (``"<tool_"``; a lone ``"<"``
    is more likely prose)."""
    if inside_call(accepted):
        return False
    text = accepted + segment
    return text.count(CALL_OPEN) > accepted.count(CALL_OPEN) or _partial_suffix(text, CALL_OPEN) >= 2


ToolAction = Literal["call", "end", "text"]


def tool_action(accepted: str, segment: str, ends: bool) -> ToolAction:
    """What a candidate does next outside a call: opens a ``call``, ``end``s the answer (nothing but
    whitespace before its end) or writes ``text``."""
    if opens_call(accepted, segment):
        return "call"
    if ends and not segment.strip():
        return "end"
    return "text"


def past_open_call(accepted: str, segment: str) -> tuple[str, str] | None:
    """``(accepted, segment)`` with the part of ``segment`` that closes the call ``accepted`` left
    open moved to ``accepted``, so that what the rest does next can be told; ``None`` when the
    segment does not close that call. Unchanged when ``accepted`` is outside any call."""
    if not inside_call(accepted):
        return accepted, segment
    close = segment.find(CALL_CLOSE)
    if close < 0:
        return None
    close += len(CALL_CLOSE)
    return accepted + segment[:close], segment[close:]


def decides_tool_use(accepted: str, actions: Sequence[ToolAction]) -> bool:
    """Whether candidates with these actions settle a question of tool use: whether to call (they
    disagree on opening a call), or what follows a finished call (end the turn, call again or write)."""
    if inside_call(accepted) or len(set(actions)) < 2:
        return False
    return "call" in actions or accepted.rstrip().endswith(CALL_CLOSE)


_OPENING_FENCE = re.compile(r"\s*```[a-z]*[ \t]*\n")
_CLOSING_FENCE = re.compile(r"\s*```[ \t]*(\n|$)")
_BARE_CALL = re.compile(r'\{\s*"name"\s*:\s*"')  # also pretty-printed: {\n  "name": "

_CALL_RE = re.compile(
    re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE) + r"|" + re.escape(CALL_OPEN) + r"(.*)", re.S
)


def _decode_call(body: str) -> tuple[str, dict[str, Any]] | str:
    """``(name, arguments)`` of a call body, or the reason it is invalid."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        return f"not valid JSON: {error.msg} at character {error.pos}"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return 'expected {"name": ..., "arguments": {...}}'
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return "arguments is a string that is not JSON"
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    return value["name"], arguments


def _name_hint(body: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"\\]*)"', body)
    return match.group(1) if match else None


def parse_tool_calls(
    text: str, ids: Sequence[str] = ()
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a finished answer into ``(content, calls, invalid_calls)``.

    ``content`` is the text outside ``<tool_call>`` blocks without the whitespace at its ends and
    around calls (exactly what :class:`ToolCallStreamParser` streams). A block that is not
    closed or not valid JSON becomes an :class:`InvalidToolCall` with the raw text. ``ids`` gives the
    ids of the calls in order (as handed out while streaming); missing ones are generated.
    """
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for index, match in enumerate(_CALL_RE.finditer(text)):
        call_id = ids[index] if index < len(ids) else new_call_id()
        closed = match.group(1) is not None
        body = (match.group(1) if closed else match.group(2)).strip()
        decoded = _decode_call(body) if closed else "the call was cut off before </tool_call>"
        if isinstance(decoded, str):
            invalid.append(InvalidToolCall(call_id, _name_hint(body), body, decoded))
        else:
            calls.append(ToolCall(call_id, decoded[0], decoded[1]))
    parser = ToolCallStreamParser()
    content = parser.feed(text)[0] + parser.finish()[0]
    return content, calls, invalid


@dataclass
class ToolCallStreamParser:
    """Reads accepted segments one at a time and emits content deltas and :class:`ToolCallDelta`s.

    Content is held back while it could be the start of ``<tool_call>``, and so is trailing
    whitespace (dropped before a call and at the end, like the answer's leading whitespace and the
    whitespace after a call). A call is held back whole until ``</tool_call>`` closes it, then sent as
    one delta (id, name and arguments JSON) if it parses; a call cut by the token budget, or one that
    does not parse, is never streamed, so no client's merging of deltas can mistake it for a finished
    call (it is in the result's ``invalid_tool_calls``). :meth:`finish` flushes what is left. Ids handed
    out are in :attr:`ids`, one per ``<tool_call>`` in order (as :func:`parse_tool_calls` numbers them);
    streamed calls are indexed 0, 1, ... among the valid ones, as the result's ``tool_calls``.
    """

    ids: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    _buffer: str = ""
    _in_call: bool = False
    _seen_content: bool = False
    _held_space: str = ""

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(CALL_OPEN)
                if start == -1:
                    keep = 0 if final else _partial_suffix(self._buffer, CALL_OPEN)
                    content.append(self._content(self._buffer[: len(self._buffer) - keep], boundary=final))
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content.append(self._content(self._buffer[:start], boundary=True))
                self._buffer = self._buffer[start + len(CALL_OPEN) :]
                self._in_call = True
                self.ids.append(new_call_id())
                continue
            end = self._buffer.find(CALL_CLOSE)
            if end == -1:
                if final:
                    self._buffer = ""  # cut by the budget: an invalid call of the result, never streamed
                break
            decoded = _decode_call(self._buffer[:end].strip())
            if not isinstance(decoded, str):
                call = ToolCall(self.ids[-1], decoded[0], decoded[1])
                deltas.append(ToolCallDelta(len(self.calls), id=call.id, name=call.name, arguments=call.arguments_json()))
                self.calls.append(call)
            self._buffer = self._buffer[end + len(CALL_CLOSE) :]
            self._in_call, self._seen_content = False, False
        return "".join(content), deltas

    def _content(self, raw: str, *, boundary: bool) -> str:
        """Content to emit now; ``boundary``: a call or the end of the answer follows ``raw``."""
        if not self._seen_content:
            raw = raw.lstrip()  # leading whitespace of the answer, or after a call
        raw = self._held_space + raw
        text = raw.rstrip()
        self._held_space = "" if boundary else raw[len(text) :]
        self._seen_content = self._seen_content or bool(text)
        return text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


# -- the request side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolRequest:
    """What a request asks for beyond text: tools, how to use them, or a response format.

    ``tools`` are OpenAI function tools (``{"type": "function", "function": {...}}``);
    ``choice`` is ``auto``, ``required``, ``none`` or ``named`` (then ``name`` is set);
    ``response_schema`` is a JSON schema (``{}`` for any JSON object) when ``response_format`` asks for JSON.
    """

    tools: tuple[dict[str, Any], ...] = ()
    choice: ToolChoiceMode = "none"
    name: str | None = None
    parallel: bool = True
    response_schema: dict[str, Any] | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may contain tool calls (tools are offered and not switched off)."""
        return bool(self.tools) and self.choice != "none"

    @property
    def constrained(self) -> bool:
        """Whether any part of the answer must follow a grammar."""
        return self.calls_tools or self.response_schema is not None

    @property
    def offered_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools the prompt shows: none when ``tool_choice="none"``; the one named tool when forced."""
        if self.choice == "none":
            return ()
        return self.tools

    def key(self) -> str:
        """A stable key for caching compiled grammars."""
        return json.dumps(
            [self.tools, self.choice, self.name, self.parallel, self.response_schema],
            sort_keys=True,
            ensure_ascii=False,
        )


NO_TOOLS = ToolRequest()


def normalize_tools(tools: Sequence[Any] | None) -> tuple[dict[str, Any], ...]:
    """OpenAI function tools from OpenAI dicts or bare ``{"name", "description", "parameters"}`` dicts."""
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise InvalidRequestError("tools must be a list of function tools")
    normalized: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidRequestError(f"tools[{index}] must be a dict, got {type(tool).__name__}")
        if tool.get("type", "function") != "function":
            kind = tool.get("type")
            raise InvalidRequestError(f"tools[{index}]: only function tools are supported, got type {kind!r}")
        function = tool.get("function", tool)
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"tools[{index}].function must be a dict")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name):
            raise InvalidRequestError(
                f"tools[{index}]: the name must be 1-128 letters, digits, _ . : or -, got {name!r}"
            )
        if name in seen:
            raise InvalidRequestError(f"tools[{index}]: duplicate tool name {name!r}")
        seen.add(name)
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            raise InvalidRequestError(f"tools[{index}] ({name}): parameters must be a JSON schema of type object")
        entry: dict[str, Any] = {"name": name, "parameters": _plain(parameters)}
        if function.get("description"):
            entry["description"] = str(function["description"])
        normalized.append({"type": "function", "function": entry})
    return tuple(normalized)


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def normalize_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> tuple[ToolChoiceMode, str | None]:
    """``(mode, name)`` from ``None``, ``"auto"``, ``"required"``/``"any"``/``True``, ``"none"``/``False``,
    a tool's name, or ``{"type": "function", "function": {"name": ...}}``.

    The no-tools rule, the same through every front door: without tools, ``None``, ``"auto"`` and
    ``"none"`` mean a plain answer; a choice that forces a call raises :class:`InvalidRequestError`.
    """
    names = tool_names(tools)
    if choice is None or choice == "auto":
        return ("auto", None) if tools else ("none", None)
    if choice is True or choice in ("required", "any"):
        mode: ToolChoiceMode = "required"
        name = None
    elif choice is False or choice == "none":
        return "none", None
    elif isinstance(choice, str):
        mode, name = "named", choice
    elif isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError(f"tool_choice {choice!r} names no function")
        mode = "named"
    else:
        raise InvalidRequestError(f"tool_choice must be 'auto', 'required', 'none' or a tool name, got {choice!r}")
    if not tools:
        raise InvalidRequestError(f"tool_choice={choice!r} needs tools, but the request has none")
    if mode == "named" and name not in names:
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})")
    return mode, name


def normalize_response_format(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for (``{}``: any JSON object), or ``None`` for text."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise InvalidRequestError(f"response_format must be a dict, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return _plain(schema) if isinstance(schema, Mapping) else {}
    if kind == "json_schema":
        spec = response_format.get("json_schema", response_format)
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError("response_format of type json_schema needs json_schema.schema (a JSON schema)")
        return _plain(schema)
    raise InvalidRequestError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


TOOL_OPTIONS: tuple[str, ...] = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
"""The per-request tool and structured-output options: the keyword arguments of :func:`tool_request`."""


def tool_request(
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    response_format: Any = None,
) -> ToolRequest:
    """Validate the tool and format options of one request into a :class:`ToolRequest`."""
    normalized = normalize_tools(tools)
    mode, name = normalize_tool_choice(tool_choice, normalized)
    schema = normalize_response_format(response_format)
    if schema is not None and mode in ("required", "named"):
        raise InvalidRequestError(
            f"response_format asks for a JSON answer but tool_choice={tool_choice!r} forces a tool call; "
            "use one or the other"
        )
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequestError(f"parallel_tool_calls must be true or false, got {parallel_tool_calls!r}")
    return ToolRequest(
        tools=normalized,
        choice=mode,
        name=name,
        parallel=True if parallel_tool_calls is None else parallel_tool_calls,
        response_schema=schema,
    )


def tools_system_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool instruction for a member whose template cannot render tools."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return TOOL_SYSTEM_PROMPT.format(tools=lines)


def _plain(value: Any) -> Any:
    """A JSON-serialisable deep copy (rejects what JSON cannot hold, with a clear error)."""
    try:
        return json.loads(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError) as error:
        raise InvalidRequestError(f"not a JSON value: {error}") from None
