"""Grammar compile time of oversized and odd schemas, per member tokenizer, against ``max_schema_bytes``.

Run from the repo root:  .venv/bin/python -m benchmarks.grammar_limits [--member SPEC ...] [--json]

For each schema (the request sizes a client could send: a 20,000-string enum, 500 tools, a schema
nested 60 objects deep, a pattern with nested alternations, ``minItems: 5000``, and enums sized around
the default ``max_schema_bytes``) it compiles the request's grammar once for every member's tokenizer
(the default ensemble's unless ``--member`` is given) and once for the byte view the engine checks
candidates with, and reports the seconds and the schema's size in bytes of JSON, and whether the
default limits let the request through. A compiled grammar is cached per tokenizer (32 entries), so a
repeated schema costs this once.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for level in range(depth):
        schema = {"type": "object", "properties": {f"k{level}": schema}, "required": [f"k{level}"]}
    return schema


def enum(count: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"enum": [f"value{i}" for i in range(count)]}}, "required": ["x"]}


def tools(count: int) -> list[dict[str, Any]]:
    parameters = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]}
    return [{"type": "function", "function": {"name": f"tool_{i}", "parameters": parameters}} for i in range(count)]


def requests() -> dict[str, dict[str, Any]]:
    """Name -> ``Ensemble.generate`` tool options."""

    def schema(value: dict[str, Any]) -> dict[str, Any]:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": value}}}

    pattern = "((a|b|c)*(d|e)+(f|g|h)?){1,20}((ab|cd|ef)+|(gh|ij)*)*"
    return {
        "enum of 20,000 strings": schema(enum(20000)),
        "enum of 5,500 strings (just under 64 KiB)": schema(enum(5500)),
        "enum of 2,000 strings": schema(enum(2000)),
        "500 tools, required": {"tools": tools(500), "tool_choice": "required"},
        "128 tools, required": {"tools": tools(128), "tool_choice": "required"},
        "nested 60 objects deep": schema(nested(60)),
        "pattern with nested alternations": schema(
            {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}, "required": ["x"]}
        ),
        "pattern (a{1,100}){1,100}": schema(
            {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a{1,100}){1,100}"}}, "required": ["x"]}
        ),
        "anyOf of 1,000 objects": schema({"anyOf": [
            {"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]} for i in range(1000)
        ]}),  # fmt: skip
        "array with minItems 5000": schema(
            {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "integer"}, "minItems": 5000}},
             "required": ["x"]}  # fmt: skip
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", action="append", help="member spec (default: the default ensemble)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)

    from specfuse_core import Ensemble, FusionConfig, grammar
    from specfuse_core.errors import RequestLimitError
    from specfuse_core.limits import check_tool_limits, json_bytes
    from specfuse_core.tools import tool_request

    ensemble = Ensemble.from_specs(args.member or None, share=True)
    vocabularies: dict[str, Any] = {"bytes (candidate checks)": grammar._bytes_view()}
    for member in ensemble.members:
        if hasattr(member, "grammar_vocab"):
            vocabularies[member.name] = member.grammar_vocab()
    defaults = FusionConfig()
    rows = []
    for name, options in requests().items():
        request = tool_request(**options)
        size = json_bytes(list(request.tools) or request.response_schema)
        try:
            check_tool_limits(request, defaults)
            allowed = "yes"
        except RequestLimitError as error:
            allowed = f"no ({error.limit})"
        seconds = {}
        for label, vocabulary in vocabularies.items():
            start = time.perf_counter()
            vocabulary.compile(request)
            seconds[label] = round(time.perf_counter() - start, 3)
        rows.append({"request": name, "schema_bytes": size, "allowed_by_default": allowed, "compile_s": seconds})
        print(f"{name:<36} {size:>8} B  allowed: {allowed:<22} " + "  ".join(f"{k}: {v:.2f}s" for k, v in seconds.items()),
              flush=True)  # fmt: skip
    allowed_worst = max(sum(r["compile_s"].values()) for r in rows if r["allowed_by_default"] == "yes")
    report = {"members": [m.name for m in ensemble.members], "rows": rows,
              "worst_allowed_compile_s_all_tokenizers": round(allowed_worst, 2)}  # fmt: skip
    print(f"worst compile time of a request the default limits allow (all tokenizers together): {allowed_worst:.2f} s")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
