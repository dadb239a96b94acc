"""`specfuse ask --tools/--tool-choice/--json-schema` become Ensemble.generate options (parsing only)."""

import json

import pytest

from specfuse_integrations.cli import build_parser, request_options
from specfuse_core.errors import InvalidRequestError

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def options(*args: str) -> dict:
    return request_options(build_parser().parse_args(["ask", "hi", *args]))


def test_no_tool_options_by_default():
    assert options() == {}


def test_tools_file_choice_and_schema(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([TOOL]))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"tools": [TOOL]}))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    assert options("--tools", str(tools), "--tool-choice", "required") == {"tools": [TOOL], "tool_choice": "required"}
    assert options("--tools", str(wrapped)) == {"tools": [TOOL]}
    assert options("--json-schema", str(schema)) == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    }


def test_unreadable_or_invalid_files_name_the_option(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidRequestError, match="--tools .*bad.json: not valid JSON"):
        options("--tools", str(bad))
    with pytest.raises(InvalidRequestError, match="--json-schema .*missing.json"):
        options("--json-schema", str(tmp_path / "missing.json"))
