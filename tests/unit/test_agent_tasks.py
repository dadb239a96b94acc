"""The agent benchmark's task generator and offline scorer (specfuse_eval.agents); no model needed."""

from __future__ import annotations

import json

from benchmarks.agents import main
from specfuse_eval.agents import (
    UNKNOWN_RESULT,
    AgentTask,
    Call,
    answer_correct,
    failure_mode,
    generate_tasks,
    lookup,
    numbers_in,
    summarize,
    task_functions,
)


def test_tasks_are_seeded_varied_and_prefix_stable() -> None:
    tasks = generate_tasks(40)
    assert tasks == generate_tasks(40)
    assert tasks[:10] == generate_tasks(10)
    assert tasks != generate_tasks(40, seed=1)
    assert len({t.item for t in tasks}) == 40
    assert len({t.question.split(str(t.quantity))[0] for t in tasks}) >= 4  # several phrasings
    assert len({t.quantity for t in tasks}) >= 20
    unknown = [t for t in tasks if not t.known]
    assert len(unknown) == 8  # 20%
    for t in tasks:
        assert str(t.quantity) in t.question and t.item in t.question
        assert 3 <= len(t.catalogue) <= 7
        assert (t.total == t.quantity * t.catalogue[t.item]) if t.known else t.total is None


def test_lookup_tolerates_case_and_plural_and_says_unknown() -> None:
    catalogue = {"zorblat": 1234, "fox": 7}
    assert lookup(catalogue, " Zorblats ") == "1234"
    assert lookup(catalogue, "foxes") == "7"
    assert lookup(catalogue, "quibble") == UNKNOWN_RESULT.format(item="quibble")
    task = AgentTask("t", catalogue, "zorblat", 3, "?")
    price_of, multiply = task_functions(task)
    assert price_of("zorblat") == "1234" and multiply(3, 1234) == 3702
    _, multiply_named = task_functions(task, named=True)
    assert multiply_named(quantity=3, unit_price=1234) == 3702


KNOWN = AgentTask("k", {"zorblat": 1234, "quib": 5}, "zorblat", 12, "How much do 12 zorblats cost?")
UNKNOWN = AgentTask("u", {"quib": 5}, "zorblat", 12, "How much do 12 zorblats cost?")


def test_success_rule() -> None:
    assert numbers_in("Total: 14,808 cents (148.08 dollars).") == [14808, 148.08]
    assert answer_correct(KNOWN, "14808")
    assert answer_correct(KNOWN, "12 zorblats cost 14,808 cents.")
    assert answer_correct(KNOWN, "That is $148.08.")
    assert not answer_correct(KNOWN, "1234")
    assert not answer_correct(KNOWN, "")
    assert answer_correct(UNKNOWN, "Sorry, zorblat is not in the price list.")
    assert answer_correct(UNKNOWN, "I couldn't find a price for 12 zorblats.")  # the quantity may be echoed
    assert answer_correct(UNKNOWN, UNKNOWN_RESULT.format(item="zorblat"))
    assert not answer_correct(UNKNOWN, "The item is unknown, so I assumed 100 cents: 1200 cents.")
    assert not answer_correct(UNKNOWN, "12 zorblats cost 1200 cents.")
    assert not answer_correct(UNKNOWN, "12")


def test_failure_modes() -> None:
    lookup_ok = Call("price_of", {"item": "zorblats"}, "1234")
    assert failure_mode(KNOWN, [lookup_ok, Call("multiply", {"a": 12, "b": 1234})], "14808") is None
    assert failure_mode(KNOWN, [], "It costs 100.") == "no_tool_call"
    assert failure_mode(KNOWN, [Call("multiply", {"a": 12, "b": 100})], "1200") == "skipped_lookup"
    assert failure_mode(KNOWN, [Call("price_of", {"item": "12 zorblats"})], "?") == "wrong_lookup"
    assert failure_mode(KNOWN, [lookup_ok, Call("multiply", {"a": 12, "b": 1})], "12") == "wrong_arithmetic"
    named = Call("multiply_named", {"quantity": 12, "unit_price": 100})
    assert failure_mode(KNOWN, [lookup_ok, named], "1200") == "wrong_arithmetic"
    right = [lookup_ok, Call("multiply", {"a": 1234, "b": 12})]
    assert failure_mode(KNOWN, right + right, None, "recursion limit: ...") == "no_final_answer"
    assert failure_mode(KNOWN, right, "Done.") == "missing_total"
    assert failure_mode(KNOWN, [lookup_ok], "Done.") == "skipped_multiply"
    assert failure_mode(KNOWN, [], None, "RuntimeError: boom") == "error"
    missing = Call("price_of", {"item": "zorblat"}, UNKNOWN_RESULT.format(item="zorblat"))
    assert failure_mode(UNKNOWN, [missing], "zorblat is unknown.") is None
    assert failure_mode(UNKNOWN, [missing, Call("multiply", {"a": 12, "b": 1})], "12") == "invented_price"
    assert failure_mode(UNKNOWN, [missing], "That is 1200 cents.") == "invented_price"
    assert failure_mode(UNKNOWN, [missing], "Here you go.") == "unknown_not_said"
    assert failure_mode(UNKNOWN, [missing], "") == "empty_answer"
    assert failure_mode(KNOWN, [lookup_ok], " ") == "empty_answer"
    wrong = Call("price_of", {"item": "12"}, UNKNOWN_RESULT.format(item="12"))
    assert failure_mode(UNKNOWN, [wrong], "The item is not in the price list.") == "wrong_lookup"


def test_summary_pairs_variants_on_common_tasks(tmp_path, capsys) -> None:
    tasks = generate_tasks(4)
    rows = []
    for variant, successes in [("lc-guarded", [1, 1, 1, 0]), ("lc-readme", [0, 0, 1, 0])]:
        for task, ok in zip(tasks, successes):
            answer = (str(task.total) if task.known else "That item is unknown.") if ok else "No idea."
            calls = [{"name": "price_of", "args": {"item": task.item}, "result": "?"}] if ok else []
            rows.append({"variant": variant, "task": task.id, "success": not ok, "mode": "stale",  # re-scored
                         "answer": answer, "calls": calls, "turns": 1, "seconds": 1.0, "error": None})  # fmt: skip
    path = tmp_path / "agents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from specfuse_eval.agents import load_results

    summary = summarize(load_results(path), tasks, ["lc-guarded", "lc-readme"])
    assert summary["variants"]["lc-guarded"]["n"] == 4 and summary["variants"]["lc-guarded"]["successes"] == 3
    assert summary["variants"]["lc-readme"]["modes"] == {"no_tool_call": 3}
    (pair,) = summary["paired"]
    assert (pair["a_only"], pair["b_only"], pair["n"]) == (2, 0, 4)
    assert pair["mcnemar_p"] == 0.5
    assert main(["--tasks", "4", "--variants", "lc-guarded,lc-readme", "--results", str(path), "--report-only"]) == 0
    assert "| lc-guarded | 4 | 3 | 75%" in capsys.readouterr().out


def test_first_turn_failure_wants_exactly_one_lookup_of_the_item() -> None:
    from specfuse_eval.agents import first_turn_failure, rescore

    task = next(t for t in generate_tasks(40) if t.known)
    lookup_call = Call("price_of", {"item": task.item})
    assert first_turn_failure(task, [lookup_call]) is None
    assert first_turn_failure(task, [Call("price_of", {"item": task.item.upper() + "S"})]) is None
    assert first_turn_failure(task, []) == "no_tool_call"
    assert first_turn_failure(task, [lookup_call, Call("multiply", {"a": task.quantity, "b": 1})]) == "extra_call"
    assert first_turn_failure(task, [Call("multiply", {"a": 2, "b": 3})]) == "skipped_lookup"
    assert first_turn_failure(task, [Call("price_of", {"item": str(task.quantity)})]) == "wrong_lookup"
    row = {"variant": "lc-first-any", "task": task.id, "calls": [{"name": "price_of", "args": {"item": "x"}}],
           "answer": "", "error": None, "first_turn": True, "seconds": 1.0}  # fmt: skip
    assert rescore(row, task)["mode"] == "wrong_lookup"  # not the agent loop's scorer
