"""Per-member prompts for requests with tools, tool history or a response format.

A member whose chat template renders ``tools=`` (and, separately, past tool calls and tool results)
gets its own template; this is detected by rendering probes, never by reading the template's source.
Any other member (SmolLM2's template silently drops tools; the plain template has no notion of them)
gets an equivalent rendering: the tool instruction in the system message, past calls as canonical
``<tool_call>`` text in the assistant turn, and tool results as user turns in ``<tool_response>`` tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .messages import Message
from .tools import ToolRequest, render_tool_calls, tools_system_text

Render = Callable[[list[dict[str, Any]], "list[dict[str, Any]] | None"], str]
"""Renders messages (and optional OpenAI tools) with a member's chat template to prompt text."""

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "specfuse_probe_tool",
        "description": "SPECFUSE_PROBE_DESCRIPTION",
        "parameters": {"type": "object", "properties": {"specfuse_probe_arg": {"type": "string"}}},
    },
}
_PROBE_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_probe",
                "type": "function",
                "function": {"name": "specfuse_probe_call", "arguments": {"specfuse_probe_arg": "PROBE_VALUE"}},
            }
        ],
    },
    {"role": "tool", "content": "SPECFUSE_PROBE_RESULT", "tool_call_id": "call_probe", "name": "specfuse_probe_call"},
]


@dataclass(frozen=True)
class ToolSupport:
    """What a member's chat template renders natively."""

    tools: bool
    history: bool


NO_NATIVE_SUPPORT = ToolSupport(tools=False, history=False)


def probe_tool_support(render: Render) -> ToolSupport:
    """Render probe conversations and see whether the tool, the past call and the tool result show up."""
    user = [{"role": "user", "content": "hi"}]
    try:
        with_tools = render(user, [_PROBE_TOOL])
        tools = "specfuse_probe_tool" in with_tools and "SPECFUSE_PROBE_DESCRIPTION" in with_tools
    except Exception:  # noqa: BLE001 - a template may reject the probe: then it cannot render tools
        tools = False
    try:
        rendered = render(_PROBE_HISTORY, None)
        history = all(s in rendered for s in ("specfuse_probe_call", "PROBE_VALUE", "SPECFUSE_PROBE_RESULT"))
    except Exception:  # noqa: BLE001
        history = False
    return ToolSupport(tools=tools, history=history)


def _native_history(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: calls OpenAI-shaped with ``arguments`` as a dict."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry = {k: v for k, v in m.items() if k != "tool_calls"}
        if m.get("tool_calls"):
            entry["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in m["tool_calls"]
            ]
        out.append(entry)
    return out


def _fallback_history(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Only system/user/assistant turns: calls as canonical text, tool results as user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            response = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
            continue
        content = m.get("content") or ""
        if m.get("tool_calls"):
            content = (content + "\n" if content else "") + render_tool_calls(m["tool_calls"])
        out.append({"role": m["role"], "content": content})
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in out]


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=(messages[0]["content"] + "\n\n" + text).strip())
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def response_format_text(schema: dict[str, Any]) -> str:
    """The instruction for a response format (the grammar enforces it; this tells the model why)."""
    if not schema:
        return "Answer with a single JSON object and nothing else."
    return (
        "Answer with a single JSON object that matches this JSON schema, and nothing else:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def needs_tool_rendering(messages: Sequence[Message], request: ToolRequest) -> bool:
    """Whether a request goes beyond plain chat: offered tools, past calls or results, or a response format."""
    return (
        bool(request.offered_tools)
        or request.response_schema is not None
        or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    )


def prepare_messages(
    messages: Sequence[Message], request: ToolRequest, support: ToolSupport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools to hand a member's chat template, given what the template renders natively."""
    if not needs_tool_rendering(messages, request):
        return [dict(m) for m in messages], None
    has_history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    tools = list(request.offered_tools)
    native_tools = bool(tools) and support.tools
    history = _native_history(messages) if (support.history or not has_history) else _fallback_history(messages)
    if tools and not native_tools:
        history = _with_system_text(history, tools_system_text(tools))
    if request.response_schema is not None:
        history = _with_system_text(history, response_format_text(request.response_schema))
    return history, (tools if native_tools else None)


def member_prompt(messages: Sequence[Message], request: ToolRequest, support: ToolSupport, render: Render) -> str:
    """The prompt text of one member for a request: native tool rendering where the template has it."""
    return render(*prepare_messages(messages, request, support))
