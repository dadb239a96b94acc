"""Validation of chat messages: the one place that decides what a request may contain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidRequestError

ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def _text_of(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                kind = block.get("type", type(block).__name__) if isinstance(block, Mapping) else type(block).__name__
                raise InvalidRequestError(
                    f"message {index}: content block of type {kind!r} is not supported; specfuse accepts text only"
                )
        return "".join(parts)
    raise InvalidRequestError(f"message {index}: content must be text, got {type(content).__name__}")


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Check a chat request and return it as plain ``{"role", "content"}`` dicts.

    Raises :class:`InvalidRequestError` for an empty list, an unknown role or non-text content.
    Text content blocks (``{"type": "text", "text": ...}``) are joined into one string.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts")
    if len(messages) == 0:
        raise InvalidRequestError("messages is empty: a request needs at least one message")
    clean: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"message {index} is a {type(message).__name__}, expected a dict")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"message {index}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if message.get("tool_calls"):
            raise InvalidRequestError(f"message {index}: tool calls are not supported")
        clean.append({"role": role, "content": _text_of(message.get("content", ""), index)})
    return clean
