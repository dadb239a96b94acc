"""BFCL tool-calling accuracy (AST checker) of each member alone and of SpecFuse, with and without the grammar.

Run it as ``python -m specfuse_eval.bfcl`` (``python -m benchmarks.tools`` in a source checkout), with
the BFCL data directory given by ``--data``:

    python -m specfuse_eval.bfcl --data bfcl/ --limit 10 --max-tokens 96 --json

Every configuration answers the same BFCL entries (``--data DIR``: ``<category>.jsonl`` and
``<category>.answers.jsonl`` files of the categories simple_python, multiple, parallel and irrelevance,
as published in ``bfcl_eval/data/``; without ``--data``, ``../shared/data/bfcl`` is used if it exists
from the current directory; ``--limit N`` entries of each) greedily, with the members' own chat
templates, ``--max-tokens`` and ``--segment-tokens``. Configurations:

- ``<member>``: the member alone, unconstrained: the tools are written into the system prompt
  (``specfuse_core.tools.tools_system_text``, the text a member without native tool rendering gets)
  and no ``tools=`` reach the engine, so nothing constrains the answer; calls are read from the text
  with ``specfuse_core.tools.parse_tool_calls``. "Prompted but unconstrained".
- ``<member>+grammar``: the member alone with ``tools=``, ``tool_choice="auto"``: the engine renders the
  tools (natively where the chat template can) and constrains every call with the grammar.
- ``specfuse`` and ``specfuse+grammar``: the ensemble, the same two ways.

A member alone is an ensemble of that one member (one draft call per round), as in
:mod:`specfuse_eval.quality`, whose cache, run ids and statistics this harness reuses: one JSON file
per (configuration, entry) under ``<results>/<run-id>/<configuration>/<id>.json`` (``--results``,
default ``benchmarks/results/tools`` under the current directory, created when missing), entries
interleaved across categories and answered entry-major, so an interrupted run has the same N in every
configuration and every category.

Scoring is offline with BFCL's own AST checker (``bfcl-eval``, installed with ``pip install --no-deps
bfcl-eval==2026.3.23``; its model registry is replaced by a stand-in, see ``load_ast_checker``).
Irrelevance is correct when the answer makes no call. Outputs: ``results.md`` and ``tools.png`` in
the run directory; ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import DataNotFoundError, MissingDependencyError, require
from .quality import (
    FUSION_CONFIGS,
    ResponseCache,
    answer_dtype,
    data_path,
    fusion_options,
    loaded_on_first_use,
    member_label,
    options_hash,
    record_from_result,
    resolve,
    run_all,
    run_id,
)

DEFAULT_DATA = "../shared/data/bfcl"
"""Used when ``--data`` is not given, if it exists from the current directory."""
BFCL_CHECKER_INSTALL = "pip install --no-deps bfcl-eval==2026.3.23"
"""BFCL's checker without the package's own dependency pins (they clash with the engine's)."""
DEFAULT_RESULTS = "benchmarks/results/tools"
CATEGORIES = ("simple_python", "multiple", "parallel", "irrelevance")
CATEGORY_ALIASES = {"simple": "simple_python"}
GRAMMAR = "+grammar"
ENSEMBLE = "specfuse"
MEMBERS_ALIAS = "members"  # in --configs: every member alone, both ways
TOOL_FUSION_CONFIGS: dict[str, dict[str, Any]] = {
    **FUSION_CONFIGS,
    "specfuse+all-vote": {"tool_vote": "all"},  # every scorer votes on whether to call (tool_vote="all")
}
"""The ensemble configurations (each also ``+grammar``): IFEval's (:mod:`specfuse_eval.quality`) and tool-only ones."""
BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}
"""BFCL's Python-flavoured type names → JSON Schema (``any`` becomes a schema without ``type``)."""
CHECKER_MODEL = "specfuse"
"""The model name handed to BFCL's checker; the stand-in registry keeps dotted function names."""


# -- data and configurations ----------------------------------------------------------------------


def convert_schema(schema: Any) -> Any:
    """A BFCL parameter schema as JSON Schema: ``dict``→``object``, ``float``→``number``,
    ``tuple``→``array``, ``any``→no type (any value), through properties, items and combinators.

    Only a ``type`` keyword whose value is a string (or a list of strings) is renamed, so a parameter
    that happens to be called ``type`` keeps its schema."""
    if not isinstance(schema, Mapping):
        return copy.deepcopy(schema)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if value != "any":
                out[key] = BFCL_TYPES.get(value, value)
        elif key == "type" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            if "any" not in value:
                out[key] = [BFCL_TYPES.get(v, v) for v in value]
        elif key in ("properties", "patternProperties") and isinstance(value, Mapping):
            out[key] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = convert_schema(value)
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            out[key] = [convert_schema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    return out


def openai_tools(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs as OpenAI function tools. Names keep their dots (``math.factorial``): the
    engine accepts them, and the checker then compares names as they are."""
    tools = []
    for f in functions:
        function: dict[str, Any] = {"name": f["name"]}
        if f.get("description"):
            function["description"] = f["description"]
        function["parameters"] = convert_schema(f.get("parameters") or {"type": "object", "properties": {}})
        tools.append({"type": "function", "function": function})
    return tools


def category_of(name: str) -> str:
    name = CATEGORY_ALIASES.get(name, name)
    if name not in CATEGORIES:
        raise SystemExit(f"unknown category {name!r} (known: {', '.join(CATEGORIES)}, simple)")
    return name


def load_entries(
    data: str | Path, categories: Sequence[str] = CATEGORIES, limit: int | None = None
) -> list[dict[str, Any]]:
    """The first ``limit`` entries of each category, interleaved (1st of each, then 2nd, ...).

    Each row: ``key`` (BFCL's id), ``category``, ``messages`` (the single turn), ``functions`` (BFCL's
    docs, as the checker wants them), ``tools`` (OpenAI tools) and ``ground_truth`` (``None`` for
    irrelevance)."""
    root = data_path(data, default=DEFAULT_DATA, what="BFCL data directory")
    per_category: list[list[dict[str, Any]]] = []
    for category in categories:
        answers: dict[str, Any] = {}
        answers_path = root / f"{category}.answers.jsonl"
        if answers_path.exists():
            for line in answers_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    answers[entry["id"]] = entry["ground_truth"]
        rows = []
        questions = root / f"{category}.jsonl"
        if not questions.is_file():
            raise DataNotFoundError(
                f"BFCL category {category}: {questions} does not exist; pass the directory that holds "
                "<category>.jsonl and <category>.answers.jsonl with --data DIR"
            )
        with open(questions, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                entry = json.loads(line)
                if len(entry["question"]) != 1:
                    raise ValueError(f"{entry['id']}: only single-turn entries are supported")
                if category != "irrelevance" and entry["id"] not in answers:
                    raise ValueError(f"{entry['id']}: no ground truth in {answers_path}")
                rows.append({"key": entry["id"], "category": category, "messages": entry["question"][0],
                             "functions": entry["function"], "tools": openai_tools(entry["function"]),
                             "ground_truth": answers.get(entry["id"])})  # fmt: skip
                if limit is not None and len(rows) >= limit:
                    break
        per_category.append(rows)
    longest = max((len(rows) for rows in per_category), default=0)
    return [rows[i] for i in range(longest) for rows in per_category if i < len(rows)]


def split_config(config: str) -> tuple[str, bool]:
    """``("qwen2.5-coder-0.5b-instruct", True)`` from ``"qwen2.5-coder-0.5b-instruct+grammar"``."""
    return (config[: -len(GRAMMAR)], True) if config.endswith(GRAMMAR) else (config, False)


def expand_configs(requested: Sequence[str] | None, member_specs: Sequence[str]) -> list[str]:
    """Configuration names in run order: members alone (unconstrained, then constrained), then SpecFuse."""
    labels = [member_label(s) for s in member_specs]
    members = [*labels, *(label + GRAMMAR for label in labels)]
    default = [*members, ENSEMBLE, ENSEMBLE + GRAMMAR]
    known = [*default, *(v + g for v in TOOL_FUSION_CONFIGS if v != ENSEMBLE for g in ("", GRAMMAR))]
    names: list[str] = []
    for entry in requested or ["all"]:
        for item in (x.strip() for x in entry.split(",") if x.strip()):
            if item == "all":
                expanded = default
            elif item == MEMBERS_ALIAS:
                expanded = members
            elif item in known:
                expanded = [item]
            else:
                raise SystemExit(f"unknown configuration {item!r} (known: {', '.join(['all', MEMBERS_ALIAS, *known])})")
            names += [n for n in expanded if n not in names]
    return names


def cache_dirnames(
    configs: Sequence[str], member_specs: Sequence[str], max_tokens: int, segment_tokens: int, dtype: str = "float32"
) -> dict[str, str]:
    """A member alone answers the same whatever the other members are: its answers live under a run id
    of that member only; the ensemble's under the ensemble's run id, in a directory named with a hash of
    every fusion option (tool options included), so a changed default never reuses stale answers."""
    by_label = {member_label(spec): spec for spec in member_specs}
    ensemble_run = run_id(member_specs, max_tokens, segment_tokens, dtype)
    out = {}
    for config in configs:
        name, _ = split_config(config)
        if name in by_label:
            out[config] = f"{run_id([by_label[name]], max_tokens, segment_tokens, dtype)}/{config}"
        else:
            options = fusion_options(name, {}, configs=TOOL_FUSION_CONFIGS, tool_options=True)
            out[config] = f"{ensemble_run}/{config}-{options_hash(options)}"
    return out


# -- generation -----------------------------------------------------------------------------------


def unconstrained_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The turn with the tools written into its system prompt (appended to an existing system message)."""
    from specfuse_core.tools import normalize_tools, tools_system_text

    text = tools_system_text(normalize_tools(tools))
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = (out[0]["content"] + "\n\n" + text).strip()
        return out
    return [{"role": "system", "content": text}, *out]


def tool_record(result: Any, seconds: float, constrained: bool) -> dict[str, Any]:
    """The cached record: ``quality.record_from_result`` plus the engine's calls and each round's timings."""
    record = record_from_result(result, seconds)
    for entry, event in zip(record["trace"], result.trace):
        entry["round_s"] = event.timings.round_s
        entry["grammar_s"] = event.timings.grammar_s
    record["constrained"] = constrained
    record["content"] = result.content
    record["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in result.tool_calls]
    record["invalid_tool_calls"] = [{"name": c.name, "arguments": c.arguments, "error": c.error}
                                    for c in result.invalid_tool_calls]  # fmt: skip
    record["summary"] = result.summary()
    from specfuse_core.engine import REPEATED_CALL_NOTE

    record["dropped_repeats"] = sum(1 for e in result.trace for n in e.notes if n.startswith(REPEATED_CALL_NOTE))
    return record


def make_answerer(member_specs: Sequence[str], args: argparse.Namespace) -> Any:
    """Load the members once; return ``answer(config, row)`` generating with the right ensemble."""
    from specfuse_core import Ensemble, FusionConfig
    from specfuse_core.registry import load_member

    options = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    members = [load_member(spec, **options) for spec in member_specs]
    by_label = {member_label(s): m for s, m in zip(member_specs, members)}
    base = FusionConfig(temperature=0, max_tokens=args.max_tokens, segment_tokens=args.segment_tokens)

    def answer(config: str, row: dict[str, Any]) -> dict[str, Any]:
        name, constrained = split_config(config)
        if name in by_label:
            ensemble = Ensemble([by_label[name]], base)
        else:
            ensemble = Ensemble(members, base.replace(**TOOL_FUSION_CONFIGS[name]))
        start = time.perf_counter()
        if constrained:
            result = ensemble.generate(row["messages"], tools=row["tools"], tool_choice="auto")
        else:
            result = ensemble.generate(unconstrained_messages(row["messages"], row["tools"]))
        return tool_record(result, time.perf_counter() - start, constrained)

    return answer


# -- scoring ----------------------------------------------------------------------------------------


def load_ast_checker() -> Any:
    """BFCL's ``ast_checker``, offline: ``bfcl_eval.constants.model_config`` (which imports every model
    handler) is replaced by a stand-in whose every model keeps dotted names (``underscore_to_dot``
    false). Returns ``check(functions, calls, ground_truth, category) -> {"valid", "error", ...}``."""
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stand_in = types.ModuleType(name)

        class _Config:
            underscore_to_dot = False

        class _Registry(dict):  # type: ignore[type-arg]
            def __missing__(self, key: str) -> _Config:
                return _Config()

        stand_in.MODEL_CONFIG_MAPPING = _Registry()  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    try:
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError as error:
        raise MissingDependencyError(f"BFCL's AST checker is missing ({error}): {BFCL_CHECKER_INSTALL}") from None

    def check(functions: Any, calls: Any, ground_truth: Any, category: str) -> dict[str, Any]:
        return ast_checker(functions, calls, ground_truth, Language.PYTHON, category, CHECKER_MODEL)

    return check


def answer_calls(record: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(calls, invalid_calls)`` of an answer: the engine's for constrained answers; for unconstrained
    ones parsed from the text now (so a change to ``parse_tool_calls`` applies to cached answers too)."""
    if record.get("constrained"):
        return list(record.get("tool_calls", [])), list(record.get("invalid_tool_calls", []))
    from specfuse_core.tools import parse_tool_calls

    _, calls, invalid = parse_tool_calls(record["response"])
    return ([{"name": c.name, "arguments": c.arguments} for c in calls],
            [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in invalid])  # fmt: skip


def bare_json_call(content: str) -> bool:
    """Whether untagged content is itself a call object (``{"name": ..., "arguments": ...}`` without
    ``<tool_call>``, a known habit of Qwen2.5-Coder-0.5B): counted, not scored as a call."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in values)


def schema_valid(calls: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> bool:
    """Every call names an offered tool and its arguments validate against that tool's schema."""
    require("jsonschema", "Schema validation of tool calls")
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in calls:
        if call["name"] not in schemas:
            return False
        try:
            jsonschema.validate(call["arguments"], schemas[call["name"]])
        except jsonschema.ValidationError:
            return False
    return True


def score_answer(row: Mapping[str, Any], record: Mapping[str, Any], check: Any) -> dict[str, Any]:
    """One answer against BFCL: ``correct`` (AST checker; irrelevance: no call), ``called`` (at least one
    call attempted, parsed or not), ``parsed`` (attempted, and every call parsed), ``valid`` (parsed and
    every call valid against its schema), ``bare_json`` and the checker's error type."""
    calls, invalid = answer_calls(record)
    called = bool(calls or invalid)
    parsed = called and not invalid
    content = record.get("content", record["response"]) if record.get("constrained") else None
    if content is None:
        from specfuse_core.tools import parse_tool_calls

        content = parse_tool_calls(record["response"])[0]
    error_type = None
    if row["category"] == "irrelevance":
        correct = not called
        error_type = "irrelevance:called" if called else None
    elif not parsed:
        correct = False
        error_type = "no_call" if not called else "unparsed_call"
    else:
        verdict = check(row["functions"], [{c["name"]: c["arguments"]} for c in calls], row["ground_truth"],
                        row["category"])  # fmt: skip
        correct = bool(verdict["valid"])
        error_type = None if correct else verdict.get("error_type")
    expected = len(row["ground_truth"]) if isinstance(row.get("ground_truth"), list) else 0
    signatures = [(c["name"], json.dumps(c["arguments"], sort_keys=True)) for c in calls]
    return {
        "key": row["key"],
        "category": row["category"],
        "correct": correct,
        "called": called,
        "parsed": parsed,
        "valid": parsed and schema_valid(calls, row["tools"]),
        "bare_json": not called and bare_json_call(content),
        "calls": len(calls),
        "extra_calls": max(0, len(calls) - expected),
        # repeats left in the answer, and repeats the engine dropped (with a note in the trace)
        "repeated_calls": len(signatures) - len(set(signatures)) + int(record.get("dropped_repeats", 0)),
        "cut_call": bool(invalid) and record.get("finish_reason") == "length",
        "error_type": error_type,
    }


def summarize(
    config: str, category: str, records: Sequence[dict[str, Any]], scores: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Accuracy, parsing and cost of one configuration on one category (``all``: pooled)."""
    from . import paired

    n = len(records)
    called = [s for s in scores if s["called"]]
    rounds = sum(r["rounds"] for r in records)
    calls = sum(r["calls"] for r in records)
    round_s = sum(t.get("round_s", 0.0) for r in records for t in r["trace"])
    grammar_s = sum(t.get("grammar_s", 0.0) for r in records for t in r["trace"])
    correct = sum(s["correct"] for s in scores)

    def frac(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    errors: dict[str, int] = {}
    for s in scores:
        if s["error_type"]:
            errors[s["error_type"]] = errors.get(s["error_type"], 0) + 1
    return {
        "config": config,
        "category": category,
        "n": n,
        "accuracy": frac(correct, n),
        "accuracy_ci": [round(x, 4) for x in paired.wilson_interval(correct, n)],
        "called": frac(len(called), n),
        "parsed": frac(sum(s["parsed"] for s in called), len(called)),
        "schema_valid": frac(sum(s["valid"] for s in called), len(called)),
        "no_call": frac(n - len(called), n),
        "bare_json": sum(s["bare_json"] for s in scores),
        "rounds_per_answer": frac(rounds, n),
        "calls_per_answer": frac(calls, n),
        "calls_per_round": frac(calls, rounds),
        "grammar_share": frac(grammar_s, round_s),
        "grammar_ms_per_round": round(1000 * grammar_s / rounds, 2) if rounds else None,
        "s_per_answer": frac(sum(r["seconds"] for r in records), n),
        "length_finishes": sum(1 for r in records if r.get("finish_reason") == "length"),
        "answers_with_extra_calls": sum(1 for s in scores if s.get("extra_calls", 0) > 0),
        "repeated_calls": sum(s.get("repeated_calls", 0) for s in scores),
        "cut_calls": sum(1 for s in scores if s.get("cut_call")),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    }


def comparison_pairs(configs: Sequence[str]) -> list[tuple[str, str]]:
    """What to pair: SpecFuse against each member the same way (gain of the ensemble), and each
    constrained configuration against the same one unconstrained (gain of the grammar)."""
    pairs = []
    for fused in (c for c in configs if c.startswith(ENSEMBLE)):
        grammar = split_config(fused)[1]
        pairs += [(fused, c) for c in configs if not c.startswith(ENSEMBLE) and split_config(c)[1] == grammar]
        default = ENSEMBLE + (GRAMMAR if grammar else "")
        if fused != default and default in configs:
            pairs.append((fused, default))  # a variant against the default ensemble
    pairs += [(c, split_config(c)[0]) for c in configs if split_config(c)[1] and split_config(c)[0] in configs]
    return pairs


def paired_tests(
    scores: dict[str, list[dict[str, Any]]], configs: Sequence[str], categories: Sequence[str]
) -> list[dict[str, Any]]:
    """McNemar's exact test (:mod:`specfuse_eval.paired`) per pair and category, and pooled over categories."""
    from . import paired

    out = []
    for a, b in comparison_pairs(configs):
        by_key_b = {s["key"]: s for s in scores[b]}
        for category in [*categories, "all"]:
            both = [(s, by_key_b[s["key"]]) for s in scores[a]
                    if s["key"] in by_key_b and category in ("all", s["category"])]  # fmt: skip
            wins, losses = paired.wins_losses((x["correct"], y["correct"]) for x, y in both)
            out.append({"config": a, "reference": b, "category": category, "n": len(both), "wins": wins,
                        "losses": losses, "mcnemar_p": round(paired.mcnemar_exact_p(wins, losses), 4)})  # fmt: skip
    return out


# -- outputs ----------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_report(rows: Sequence[dict[str, Any]], tests: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# BFCL tool-calling benchmark",
        "",
        f"N = {meta['n_per_category']} entries per category of `{meta['data']}` (the first N of each file), members: "
        + ", ".join(f"`{m}`" for m in meta["members"])
        + f"; greedy, max_tokens {meta['max_tokens']}, segment_tokens {meta['segment_tokens']}, device "
        f"`{meta['device']}`.",
        "",
        "`X` = prompted but unconstrained (tools in the system prompt, calls parsed from the text); "
        "`X+grammar` = `tools=`, `tool_choice=\"auto\"`, calls constrained by the grammar. "
        "AST = BFCL's AST checker (irrelevance: no call made), in %, with a 95% Wilson interval. "
        "Called = answers with at least one call (parsed or not). Parsed / schema-valid: share of those "
        "whose every call parsed / also validated against its tool's schema. Bare JSON = answers with no "
        "tagged call whose text is a call object (not scored as a call). Grammar = grammar time / round time. "
        "Extra = answers with more tool calls than the task needs; repeated = calls with the same name and "
        "arguments as an earlier one in the answer (dropped by the engine or not); cut = answers whose call "
        "`max_tokens` cut. Calls/answer and calls/round count member calls (drafts and scoring).",
        "",
        "| configuration | category | N | AST | 95% CI | called | parsed | schema-valid | bare JSON | "
        "rounds/answer | calls/answer | calls/round | grammar % of round (ms/round) | s/answer | length cut | "
        "extra | repeated | cut |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["accuracy_ci"]
        grammar = "–" if not r["grammar_share"] else f"{_pct(r['grammar_share'])} ({r['grammar_ms_per_round']:.1f})"
        lines.append(
            f"| {r['config']} | {r['category']} | {r['n']} | {_pct(r['accuracy'])} | {_pct(low)}–{_pct(high)} | "
            f"{_pct(r['called'])} | {_pct(r['parsed'])} | {_pct(r['schema_valid'])} | {r['bare_json']} | "
            f"{r['rounds_per_answer'] or 0:.1f} | {r['calls_per_answer'] or 0:.1f} | {r['calls_per_round'] or 0:.2f} | "
            f"{grammar} | {r['s_per_answer'] or 0:.1f} | {r['length_finishes']} | {r['answers_with_extra_calls']} | "
            f"{r['repeated_calls']} | {r['cut_calls']} |"
        )
    lines += ["", "## Paired comparisons (McNemar's exact test, two-sided)", "",
              "Wins / losses: entries only the first / only the second configuration gets right. "
              "Significant means p < 0.05.", "",
              "| configuration | against | category | N | wins | losses | p |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in tests:
        mark = " **(significant)**" if t["mcnemar_p"] < 0.05 else ""
        lines.append(f"| {t['config']} | {t['reference']} | {t['category']} | {t['n']} | {t['wins']} | {t['losses']} | "
                     f"{t['mcnemar_p']:.3g}{mark} |")  # fmt: skip
    lines += ["", "## Checker error types", ""]
    for r in rows:
        if r["category"] != "all" and r["errors"]:
            lines.append(f"- {r['config']} / {r['category']}: " + ", ".join(f"{k} {v}" for k, v in r["errors"].items()))
    lines.append("")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    """AST accuracy per category and configuration (bars, 95% Wilson intervals), and member calls per answer."""
    require("matplotlib", "The BFCL figure")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    by = {(r["config"], r["category"]): r for r in rows}
    colors = ["#9ecae1", "#fdae6b", "#1f77b4", "#e6550d", "#a1d99b", "#31a354", "#bcbddc", "#756bb1"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        xs, ys, lows, highs, cost = [], [], [], [], []
        for j, category in enumerate(categories):
            r = by.get((config, category))
            if r is None or r["accuracy"] is None:
                continue
            xs.append(j + (i - (len(configs) - 1) / 2) * width)
            ys.append(100 * r["accuracy"])
            lows.append(100 * (r["accuracy"] - r["accuracy_ci"][0]))
            highs.append(100 * (r["accuracy_ci"][1] - r["accuracy"]))
            cost.append(r["calls_per_answer"] or 0)
        color = colors[i % len(colors)]
        axes[0].bar(xs, ys, width, color=color, label=config, yerr=[lows, highs], capsize=2,
                    error_kw={"alpha": 0.6, "linewidth": 1})  # fmt: skip
        axes[1].bar(xs, cost, width, color=color, label=config)
    for ax, title, ylabel in ((axes[0], "AST accuracy (irrelevance: no call)", "%"),
                              (axes[1], "member calls per answer", "calls")):  # fmt: skip
        ax.set_xticks(range(len(categories)), categories, fontsize=9)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.suptitle(f"BFCL dev: N = {meta['n_per_category']} per category, greedy, max {meta['max_tokens']} tokens; "
                 "bars: 95% Wilson intervals", fontsize=12)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------------


def build_parser(add_help: bool = True, prog: str = "python -m specfuse_eval.bfcl") -> argparse.ArgumentParser:
    """The BFCL harness's options."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--data", metavar="DIR", help=(
        "BFCL data: a directory of <category>.jsonl and <category>.answers.jsonl files (default "
        f"{DEFAULT_DATA} from the current directory, if it exists)"))  # fmt: skip
    p.add_argument("--categories", default=",".join(CATEGORIES),
                   help="comma-separated (default: all four; 'simple' = simple_python)")  # fmt: skip
    p.add_argument("--configs", action="append", metavar="LIST", help=(
        "comma-separated, repeatable: 'all' (default), 'members' (each member alone, with and without the "
        "grammar), a member's name, NAME+grammar, specfuse, specfuse+grammar, or an ensemble variant of "
        "the IFEval harness (specfuse_eval.quality) or specfuse+all-vote, each also +grammar"))  # fmt: skip
    p.add_argument("--member", action="append", metavar="SPEC",
                   help="member spec, repeatable (default: the default ensemble)")  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=128,
                   help="answer budget in the first member's tokens (default 128)")  # fmt: skip
    p.add_argument("--segment-tokens", type=int, default=10, help="tokens per drafted segment (default 10)")
    p.add_argument("--limit", type=int, help="only the first N entries of each category")
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help=f"results directory, created if missing (default {DEFAULT_RESULTS})")  # fmt: skip
    p.add_argument("--device", help="device for the members (cpu, cuda, ...)")
    p.add_argument("--dtype", help="dtype for the members")
    p.add_argument("--concurrency", type=int, default=1,
                   help="answer this many entries of one configuration at once (batched; same greedy answers)")  # fmt: skip
    p.add_argument("--score-only", action="store_true", help="do not generate: score the cached answers only")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m specfuse_eval.bfcl") -> int:
    """Parse ``argv`` and :func:`run`."""
    return run(build_parser(prog=prog).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Answer, score and report. A missing data file or a missing dependency (BFCL's checker, the
    ``eval`` extra) is reported on standard error, with exit status 2, before any model loads."""
    try:
        return _run(args)
    except (DataNotFoundError, MissingDependencyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from specfuse_core.engine import DEFAULT_MEMBERS

    member_specs = list(args.member or DEFAULT_MEMBERS)
    configs = expand_configs(args.configs, member_specs)
    categories = [category_of(c.strip()) for c in args.categories.split(",") if c.strip()]
    entries = load_entries(args.data, categories, args.limit)
    check = load_ast_checker()  # fail before any model loads if the checker is missing
    require("jsonschema", "Schema validation of tool calls")
    require("matplotlib", "The BFCL figure")
    dtype = answer_dtype(args)
    run_dir = resolve(args.results) / run_id(member_specs, args.max_tokens, args.segment_tokens, dtype)
    dirnames = cache_dirnames(configs, member_specs, args.max_tokens, args.segment_tokens, dtype)
    cache = ResponseCache(resolve(args.results), dirnames)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    if args.score_only:  # the entries every configuration has answered
        records = {c: [r for r in (cache.get(c, row["key"]) for row in entries) if r is not None] for c in configs}
        answered = set.intersection(*({r["key"] for r in recs} for recs in records.values())) if records else set()
        records = {c: [r for r in recs if r["key"] in answered] for c, recs in records.items()}
    else:
        lazy_answer = loaded_on_first_use(lambda: make_answerer(member_specs, args))
        records = run_all(entries, configs, cache, lazy_answer, log=log, concurrency=args.concurrency)

    by_key = {row["key"]: row for row in entries}
    scores = {c: [score_answer(by_key[r["key"]], r, check) for r in records[c]] for c in configs}
    rows = []
    for config in configs:
        for category in [*categories, "all"]:
            picked = [(r, s) for r, s in zip(records[config], scores[config]) if category in ("all", s["category"])]
            rows.append(summarize(config, category, [r for r, _ in picked], [s for _, s in picked]))
    tests = paired_tests(scores, configs, categories)
    answered = {r["key"] for r in records[configs[0]]} if configs else set()
    counts = {c: sum(1 for row in entries if row["key"] in answered and row["category"] == c) for c in categories}
    meta = {"n_per_category": ", ".join(f"{c} {k}" for c, k in counts.items()), "n": counts,
            "data": args.data or DEFAULT_DATA,
            "members": member_specs, "max_tokens": args.max_tokens, "segment_tokens": args.segment_tokens,
            "device": args.device or "auto (cpu here)", "run_dir": str(run_dir)}  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    report = markdown_report(rows, tests, meta)
    report_path, plot_path = run_dir / "results.md", run_dir / "tools.png"
    report_path.write_text(report, encoding="utf-8")
    plot([r for r in rows if r["category"] != "all"], meta, plot_path)
    if log:
        log(report)
        log(f"wrote {report_path} and {plot_path}")
    if args.json:
        print(json.dumps({**meta, "configs": rows, "paired": tests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
