"""The BFCL tool-calling benchmark: schema conversion, configurations, data loading and scoring glue (no models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specfuse_eval import bfcl as bench

FACTORIAL = {
    "name": "math.factorial",
    "description": "Compute n!.",
    "parameters": {"type": "dict", "properties": {"n": {"type": "integer", "description": "The number."}},
                   "required": ["n"]},
}  # fmt: skip
AREA = {
    "name": "calculate_triangle_area",
    "description": "Area of a triangle.",
    "parameters": {"type": "dict", "required": ["base", "height"], "properties": {
        "base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}}},
}  # fmt: skip
AREA_TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]


def test_convert_schema_renames_bfcl_types_everywhere_but_keeps_a_parameter_called_type() -> None:
    schema = {
        "type": "dict",
        "properties": {
            "ratio": {"type": "float", "default": 0.5},
            "point": {"type": "tuple", "items": {"type": "float"}},
            "anything": {"type": "any", "description": "whatever"},
            "options": {"type": "dict", "properties": {"depth": {"type": "integer"}}},
            "type": {"type": "string", "enum": ["a", "b"]},
            "rows": {"type": "array", "items": {"type": "dict", "properties": {"x": {"type": "float"}}}},
            "either": {"anyOf": [{"type": "float"}, {"type": "string"}]},
            "maybe": {"type": ["float", "null"]},
        },
        "required": ["ratio"],
    }
    assert bench.convert_schema(schema) == {
        "type": "object",
        "properties": {
            "ratio": {"type": "number", "default": 0.5},
            "point": {"type": "array", "items": {"type": "number"}},
            "anything": {"description": "whatever"},
            "options": {"type": "object", "properties": {"depth": {"type": "integer"}}},
            "type": {"type": "string", "enum": ["a", "b"]},
            "rows": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}},
            "either": {"anyOf": [{"type": "number"}, {"type": "string"}]},
            "maybe": {"type": ["number", "null"]},
        },
        "required": ["ratio"],
    }
    assert schema["type"] == "dict"  # the input is not modified


def test_openai_tools_keep_dotted_names_and_pass_the_engine_validation() -> None:
    from specfuse_core.tools import normalize_tools

    tools = bench.openai_tools([FACTORIAL, {"name": "noop", "parameters": {}}])
    assert tools[0] == {"type": "function", "function": {
        "name": "math.factorial", "description": "Compute n!.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer", "description": "The number."}},
                       "required": ["n"]}}}  # fmt: skip
    assert tools[1]["function"] == {"name": "noop", "parameters": {"type": "object", "properties": {}}}
    assert normalize_tools(tools)[0]["function"]["name"] == "math.factorial"


def test_configurations_expand_and_split() -> None:
    specs = ["smollm2-135m-instruct", "./models/qwen::draft"]
    assert bench.expand_configs(None, specs) == [
        "smollm2-135m-instruct", "qwen", "smollm2-135m-instruct+grammar", "qwen+grammar",
        "specfuse", "specfuse+grammar"]  # fmt: skip
    assert bench.expand_configs(["specfuse+grammar,qwen+grammar", "qwen+grammar"], specs) == [
        "specfuse+grammar", "qwen+grammar"]  # fmt: skip
    assert bench.split_config("qwen+grammar") == ("qwen", True)
    assert bench.split_config("specfuse") == ("specfuse", False)
    with pytest.raises(SystemExit, match="unknown configuration"):
        bench.expand_configs(["specfuse+shout"], specs)
    # IFEval's ensemble variants (and tool-only ones) run here too, each also under the grammar
    assert bench.expand_configs(["specfuse+calibrated+grammar,specfuse+all-vote+grammar"], specs) == [
        "specfuse+calibrated+grammar", "specfuse+all-vote+grammar"]  # fmt: skip
    dirs = bench.cache_dirnames(["qwen+grammar", "specfuse", "specfuse+all-vote"], specs, 96, 10)
    assert dirs["qwen+grammar"].endswith("/qwen+grammar") and dirs["specfuse"].split("/")[1].startswith("specfuse-")
    assert dirs["qwen+grammar"].split("/")[0] != dirs["specfuse"].split("/")[0]  # a member alone: its own run id
    assert dirs["specfuse+all-vote"] != dirs["specfuse"]  # the options hash tells tool-only options apart
    assert bench.comparison_pairs(bench.expand_configs(["qwen,qwen+grammar,specfuse,specfuse+grammar"], specs)) == [
        ("specfuse", "qwen"), ("specfuse+grammar", "qwen+grammar"), ("qwen+grammar", "qwen"),
        ("specfuse+grammar", "specfuse")]  # fmt: skip
    assert bench.comparison_pairs(["qwen+grammar", "specfuse+grammar", "specfuse+all-vote+grammar"]) == [
        ("specfuse+grammar", "qwen+grammar"), ("specfuse+all-vote+grammar", "qwen+grammar"),
        ("specfuse+all-vote+grammar", "specfuse+grammar")]  # fmt: skip


def test_load_entries_interleaves_categories_and_takes_limit_per_category(tmp_path: Path) -> None:
    def write(name: str, rows: list[dict]) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    question = [[{"role": "user", "content": "Area of a 10 by 5 triangle?"}]]
    write("simple_python.jsonl",
          [{"id": f"simple_python_{i}", "question": question, "function": [AREA]} for i in range(3)])  # fmt: skip
    write("simple_python.answers.jsonl", [{"id": f"simple_python_{i}", "ground_truth": AREA_TRUTH} for i in range(3)])
    write("irrelevance.jsonl", [{"id": "irrelevance_0", "question": question, "function": [FACTORIAL]}])
    rows = bench.load_entries(tmp_path, ["simple_python", "irrelevance"], limit=2)
    assert [r["key"] for r in rows] == ["simple_python_0", "irrelevance_0", "simple_python_1"]
    assert rows[0]["ground_truth"] == AREA_TRUTH and rows[1]["ground_truth"] is None
    assert rows[0]["messages"] == question[0] and rows[0]["tools"][0]["function"]["parameters"]["type"] == "object"
    assert bench.category_of("simple") == "simple_python"


def test_missing_bfcl_data_says_which_file_and_how_to_pass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from specfuse_eval import DataNotFoundError

    monkeypatch.chdir(tmp_path)  # not a checkout: the default data directory is not there
    with pytest.raises(DataNotFoundError, match=r"BFCL data directory: no --data given .*--data PATH"):
        bench.load_entries(None)
    with pytest.raises(DataNotFoundError, match=r"irrelevance.jsonl does not exist; pass the directory"):
        bench.load_entries(tmp_path, ["irrelevance"])
    assert bench.main(["--data", "nowhere", "--member", "a", "--score-only", "--quiet"]) == 2
    assert "nowhere does not exist (given by --data nowhere)" in capsys.readouterr().err


def test_unconstrained_messages_put_the_tool_text_in_the_system_prompt() -> None:
    from specfuse_core.tools import normalize_tools, tools_system_text

    tools = bench.openai_tools([FACTORIAL])
    plain = bench.unconstrained_messages([{"role": "user", "content": "5!?"}], tools)
    assert plain[0]["role"] == "system" and plain[0]["content"] == tools_system_text(normalize_tools(tools))
    assert "math.factorial" in plain[0]["content"] and plain[1] == {"role": "user", "content": "5!?"}
    system = {"role": "system", "content": "Be brief."}
    merged = bench.unconstrained_messages([system, {"role": "user", "content": "x"}], tools)
    assert merged[0]["content"].startswith("Be brief.\n\n# Tools") and len(merged) == 2


def test_bare_json_calls_are_recognised() -> None:
    assert bench.bare_json_call('{"name": "math.factorial", "arguments": {"n": 5}}')
    assert bench.bare_json_call('```json\n[{"name": "f", "arguments": {}}]\n```')
    assert not bench.bare_json_call("The answer is 120.")
    assert not bench.bare_json_call('{"n": 5}')


def test_schema_validity() -> None:
    tools = bench.openai_tools([AREA])
    assert bench.schema_valid([{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}], tools)
    as_text = {"base": "10", "height": 5}
    assert not bench.schema_valid([{"name": "calculate_triangle_area", "arguments": as_text}], tools)
    assert not bench.schema_valid([{"name": "calculate_triangle_area", "arguments": {"base": 10}}], tools)
    assert not bench.schema_valid([{"name": "other", "arguments": {}}], tools)


def _row(category: str, functions: list[dict], truth: list[dict] | None, key: str = "k") -> dict:
    return {"key": key, "category": category, "functions": functions, "tools": bench.openai_tools(functions),
            "ground_truth": truth}  # fmt: skip


def _unconstrained(text: str) -> dict:
    return {"constrained": False, "response": text}


def _call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_score_irrelevance_without_the_checker() -> None:
    def never(*args: object) -> None:
        raise AssertionError("irrelevance needs no checker")

    row = _row("irrelevance", [FACTORIAL], None)
    assert bench.score_answer(row, _unconstrained("I cannot help with the weather."), never)["correct"]
    called = bench.score_answer(row, _unconstrained(_call("math.factorial", {"n": 3})), never)
    assert not called["correct"] and called["called"] and called["error_type"] == "irrelevance:called"
    cut = bench.score_answer(row, _unconstrained('<tool_call>\n{"name": "math.fac'), never)
    assert not cut["correct"] and cut["called"] and not cut["parsed"]  # an attempted call counts as a call
    bare = bench.score_answer(row, _unconstrained('{"name": "math.factorial", "arguments": {"n": 3}}'), never)
    assert bare["correct"] and bare["bare_json"]  # not a call for the API, but counted


def test_score_uses_the_engine_calls_of_constrained_answers() -> None:
    row = _row("simple_python", [AREA], AREA_TRUTH)
    seen = []

    def check(functions: object, calls: object, truth: object, category: str) -> dict:
        seen.append((calls, category))
        return {"valid": True}

    record = {"constrained": True, "response": "ignored", "content": "",
              "tool_calls": [{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}],
              "invalid_tool_calls": []}  # fmt: skip
    score = bench.score_answer(row, record, check)
    assert score["correct"] and score["parsed"] and score["valid"] and score["calls"] == 1
    assert seen == [([{"calculate_triangle_area": {"base": 10, "height": 5}}], "simple_python")]
    no_call = bench.score_answer(row, {**record, "tool_calls": [], "content": "It is 25."}, check)
    assert not no_call["correct"] and not no_call["called"] and no_call["error_type"] == "no_call"
    assert len(seen) == 1  # no call: the checker is not asked


def test_extra_repeated_and_cut_calls_are_counted() -> None:
    row = _row("simple_python", [AREA], AREA_TRUTH)  # the task needs one call

    def check(*args: object) -> dict:
        return {"valid": False}

    call = {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}
    other = {"name": "calculate_triangle_area", "arguments": {"height": 5, "base": 12}}
    record = {"constrained": True, "response": "", "content": "", "tool_calls": [call, other, dict(call)],
              "invalid_tool_calls": [], "finish_reason": "tool_calls"}  # fmt: skip
    score = bench.score_answer(row, record, check)
    assert score["extra_calls"] == 2 and score["repeated_calls"] == 1 and not score["cut_call"]
    dropped = bench.score_answer(row, {**record, "tool_calls": [call], "dropped_repeats": 1}, check)
    assert dropped["extra_calls"] == 0 and dropped["repeated_calls"] == 1  # the engine dropped the repeat
    cut = {**record, "tool_calls": [call], "invalid_tool_calls": [{"name": "calculate_triangle_area",
           "arguments": '{"base": 1', "error": "cut"}], "finish_reason": "length"}  # fmt: skip
    assert bench.score_answer(row, cut, check)["cut_call"]
    irrelevance = bench.score_answer(_row("irrelevance", [AREA], None), {**record, "tool_calls": [call]}, check)
    assert irrelevance["extra_calls"] == 1  # no call was needed
    summary = bench.summarize("x", "simple_python", [{**record, "rounds": 1, "calls": 1, "seconds": 1.0, "trace": []}] * 2,
                              [score, bench.score_answer(row, cut, check)])  # fmt: skip
    assert (summary["answers_with_extra_calls"], summary["repeated_calls"], summary["cut_calls"]) == (1, 1, 1)


def test_summarize_shares_and_grammar_time() -> None:
    records = [
        {"key": "a", "rounds": 2, "calls": 6, "seconds": 3.0, "finish_reason": "tool_calls",
         "trace": [{"round_s": 1.0, "grammar_s": 0.05}, {"round_s": 1.0, "grammar_s": 0.05}]},
        {"key": "b", "rounds": 1, "calls": 3, "seconds": 1.0, "finish_reason": "length",
         "trace": [{"round_s": 2.0, "grammar_s": 0.1}]},
    ]  # fmt: skip
    scores = [
        {"key": "a", "category": "simple_python", "correct": True, "called": True, "parsed": True, "valid": True,
         "bare_json": False, "error_type": None},
        {"key": "b", "category": "simple_python", "correct": False, "called": True, "parsed": False, "valid": False,
         "bare_json": False, "error_type": "unparsed_call"},
    ]  # fmt: skip
    row = bench.summarize("specfuse+grammar", "simple_python", records, scores)
    assert row["accuracy"] == 0.5 and row["called"] == 1.0 and row["parsed"] == 0.5 and row["schema_valid"] == 0.5
    assert row["rounds_per_answer"] == 1.5 and row["calls_per_answer"] == 4.5 and row["calls_per_round"] == 3.0
    assert row["grammar_share"] == 0.05 and row["grammar_ms_per_round"] == pytest.approx(66.67)
    assert row["length_finishes"] == 1 and row["errors"] == {"unparsed_call": 1}
    assert 0 < row["accuracy_ci"][0] < 0.5 < row["accuracy_ci"][1] < 1


def test_paired_tests_count_wins_and_losses_per_category() -> None:
    def s(key: str, category: str, correct: bool) -> dict:
        return {"key": key, "category": category, "correct": correct}

    scores = {
        "specfuse": [s("1", "multiple", True), s("2", "multiple", True), s("3", "parallel", False)],
        "qwen": [s("1", "multiple", False), s("2", "multiple", True), s("3", "parallel", True)],
    }
    tests = {(t["category"]): t for t in bench.paired_tests(scores, ["qwen", "specfuse"], ["multiple", "parallel"])}
    assert (tests["multiple"]["wins"], tests["multiple"]["losses"], tests["multiple"]["n"]) == (1, 0, 2)
    assert (tests["parallel"]["wins"], tests["parallel"]["losses"]) == (0, 1)
    assert (tests["all"]["wins"], tests["all"]["losses"], tests["all"]["mcnemar_p"]) == (1, 1, 1.0)


@pytest.mark.bfcl
def test_bfcl_checker_runs_offline_on_hand_checked_answers() -> None:
    import bfcl_eval  # noqa: F401 - `make test` installs it (pip install --no-deps bfcl-eval==2026.3.23)

    check = bench.load_ast_checker()
    row = _row("simple_python", [AREA], AREA_TRUTH)
    ok = _call("calculate_triangle_area", {"base": 10, "height": 5})
    assert bench.score_answer(row, _unconstrained(ok), check)["correct"]
    with_unit = _call("calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"})
    assert bench.score_answer(row, _unconstrained(with_unit), check)["correct"]
    wrong = bench.score_answer(row, _unconstrained(_call("calculate_triangle_area", {"base": 5, "height": 10})), check)
    assert not wrong["correct"] and wrong["parsed"] and wrong["error_type"].startswith("value_error")
    twice = bench.score_answer(row, _unconstrained(ok + "\n" + ok), check)
    assert not twice["correct"] and twice["error_type"] == "simple_function_checker:wrong_count"

    dotted = _row("simple_python", [FACTORIAL], [{"math.factorial": {"n": [5]}}])
    assert bench.score_answer(dotted, _unconstrained(_call("math.factorial", {"n": 5})), check)["correct"]
    assert not bench.score_answer(dotted, _unconstrained(_call("math_factorial", {"n": 5})), check)["correct"]

    parallel = _row("parallel", [FACTORIAL], [{"math.factorial": {"n": [5]}}, {"math.factorial": {"n": [6]}}])
    both = _call("math.factorial", {"n": 6}) + _call("math.factorial", {"n": 5})  # any order
    assert bench.score_answer(parallel, _unconstrained(both), check)["correct"]
    assert not bench.score_answer(parallel, _unconstrained(_call("math.factorial", {"n": 5})), check)["correct"]

    multiple = _row("multiple", [AREA, FACTORIAL], [{"math.factorial": {"n": [5]}}])
    assert bench.score_answer(multiple, _unconstrained(_call("math.factorial", {"n": 5})), check)["correct"]
    assert not bench.score_answer(multiple, _unconstrained(ok), check)["correct"]
