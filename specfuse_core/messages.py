"""Validation of chat messages: the one place that decides what a request may contain.

A clean message is a dict with ``role`` (``system``, ``user``, ``assistant`` or ``tool``) and
``content`` (text); a role alias (OpenAI's ``developer``, the system role of newer models) is read as
the role it stands for. An assistant message may also carry ``tool_calls``: a list of
``{"id", "name", "arguments"}`` with ``arguments`` a dict. A tool message carries ``tool_call_id``
(the call it answers) and ``name`` (that call's tool).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidRequestError

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES: dict[str, str] = {"developer": "system"}
"""Roles read as another: every front door passes them through and this module maps them, once."""

Message = dict[str, Any]


def _blocks(content: Any, index: int) -> tuple[str, list[dict[str, Any]]]:
    """The text of ``content`` and any ``tool_use`` blocks it holds (LangChain/Anthropic style)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, Sequence):
        parts: list[str] = []
        uses: list[dict[str, Any]] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, Mapping) and block.get("type") in ("tool_use", "tool_call"):
                uses.append(dict(block))
            else:
                kind = block.get("type", type(block).__name__) if isinstance(block, Mapping) else type(block).__name__
                raise InvalidRequestError(
                    f"message {index}: content block of type {kind!r} is not supported; specfuse accepts text only"
                )
        return "".join(parts), uses
    raise InvalidRequestError(f"message {index}: content must be text, got {type(content).__name__}")


def _text_of(content: Any, index: int) -> str:
    text, uses = _blocks(content, index)
    if uses:
        raise InvalidRequestError(f"message {index}: a tool_use block is only valid in an assistant message")
    return text


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"{where}: arguments are not valid JSON ({error.msg})") from None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where}: arguments must be a JSON object, got {type(value).__name__}")
    return dict(value)


def _tool_calls(raw: Any, uses: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """``{"id", "name", "arguments": dict}`` from OpenAI-, LangChain- or Anthropic-shaped calls."""
    entries = list(raw) if raw else uses  # tool_use blocks duplicate tool_calls when both are given
    if isinstance(raw, (str, bytes, Mapping)):
        raise InvalidRequestError(f"message {index}: tool_calls must be a list")
    calls: list[dict[str, Any]] = []
    for k, call in enumerate(entries):
        where = f"message {index}, tool call {k}"
        if not isinstance(call, Mapping):
            raise InvalidRequestError(f"{where}: expected a dict, got {type(call).__name__}")
        function = call.get("function") if isinstance(call.get("function"), Mapping) else call
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"{where}: the call has no tool name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequestError(f"{where}: the call has no id")
        raw_args = function.get("arguments", function.get("args", function.get("input")))
        calls.append({"id": call_id, "name": name, "arguments": _arguments(raw_args, where)})
    return calls


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Check a chat request and return it as clean message dicts (see the module docstring).

    Raises :class:`InvalidRequestError` for an empty list, an unknown role, non-text content, a
    malformed tool call, or a tool message whose ``tool_call_id`` answers no earlier call.
    Text content blocks (``{"type": "text", "text": ...}``) are joined into one string.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts")
    if len(messages) == 0:
        raise InvalidRequestError("messages is empty: a request needs at least one message")
    clean: list[Message] = []
    calls_by_id: dict[str, str] = {}
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"message {index} is a {type(message).__name__}, expected a dict")
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            known = ", ".join((*ROLES, *ROLE_ALIASES))
            raise InvalidRequestError(f"message {index}: unknown role {role!r}; expected one of {known}")
        if role == "assistant":
            text, uses = _blocks(message.get("content"), index)
            entry: Message = {"role": role, "content": text}
            calls = _tool_calls(message.get("tool_calls"), uses, index)
            if calls:
                entry["tool_calls"] = calls
                calls_by_id.update((c["id"], c["name"]) for c in calls)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequestError(f"message {index}: a tool message needs tool_call_id (the call it answers)")
            if call_id not in calls_by_id:
                raise InvalidRequestError(
                    f"message {index}: tool_call_id {call_id!r} matches no tool call of an earlier assistant message"
                )
            entry = {
                "role": role,
                "content": _text_of(message.get("content"), index),
                "tool_call_id": call_id,
                "name": calls_by_id[call_id],
            }
        else:
            if message.get("tool_calls"):
                raise InvalidRequestError(f"message {index}: only assistant messages may carry tool_calls")
            entry = {"role": role, "content": _text_of(message.get("content", ""), index)}
        clean.append(entry)
    return clean
