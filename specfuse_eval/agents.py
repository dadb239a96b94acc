"""Agent benchmark: generated two-step shop tasks (a price lookup, then a multiplication) run through the
real LangChain ``create_agent`` and the real LlamaIndex ``FunctionAgent``, scored offline.

The generator, the scorer and the report live here; the runner with the agent variants is
``benchmarks/agents.py`` (it drives ``specfuse_integrations``, which this package never imports):

    nice -n 10 python -m benchmarks.agents --json   # every variant: 40 tasks (DEFAULT_LIMITS: fewer)
    python -m benchmarks.agents --report-only       # the tables from the results file

Tasks (:func:`generate_tasks`, seeded): each task has its own made-up price catalogue (3 to 7 invented
item names, prices 2 to 999 cents: no model can know them), a quantity (2 to 60) and a question in one
of six phrasings. Every fifth task (20%) asks for an item that is *not* in the catalogue; the
lookup tool then answers ``unknown item: <name> is not in the price list``.

Tools: ``price_of(item)`` looks the item up in the task's catalogue (case-insensitive, a plural ``s``
tolerated) and ``multiply(a, b)`` multiplies exactly.

Success (:func:`failure_mode` returns ``None``), from the final answer (the agent's last message: the closing AI message,
or the calculator's result when it returns directly):

- known item: the answer contains the correct total ``quantity × price`` as a number (``1234``,
  ``1,234`` and ``12.34`` for cents written as dollars all count);
- unknown item: the answer says so (one of ``unknown``, ``not found``, ``not in``, ``no price``,
  ``not available``, ``don't have``, ``doesn't exist``, ``couldn't find``, ``cannot find``, ...) and
  contains no number other than the quantity asked for (no invented price or total), and ``price_of``
  was called with the item's name (singular or plural): saying "unknown" after looking up ``"31"``
  is not a success.

Each run also records the tool calls made, and failures get one mode (:func:`failure_mode`, the
first that applies): ``no_tool_call``, ``skipped_lookup``, ``wrong_lookup`` (the item asked for was
never looked up under its name, e.g. ``"59 kiloonts"``), ``invented_price`` (unknown item, but a number
was given or multiply was called), ``wrong_arithmetic`` (multiply called, but never with the quantity
and the looked-up price: ``multiply(39, 1)``, an invented round price), ``no_final_answer`` (the loop
hit its recursion or iteration limit), ``skipped_multiply`` (looked up, never multiplied, no total),
``missing_total`` (both tools called right, but the answer lacks the total), ``empty_answer`` (looked
up, then ended the turn with no text and no call), ``unknown_not_said`` and ``error``. The report re-scores the recorded calls and answers with the current scorer.

Variants (``VARIANTS`` in ``benchmarks/agents.py``): ``lc-plain`` (``create_agent``, both tools, a plain prompt),
``lc-readme`` (README.md's example: a three-step prompt, the calculator ``return_direct``),
``lc-guarded`` (that, plus an unknown-item rule in the prompt and the first model call forced to
``price_of`` by a ``wrap_model_call`` middleware that sets ``tool_choice``), ``lc-named`` (that, with
``multiply(quantity, unit_price)`` instead of ``multiply(a, b)``), ``li-guarded`` / ``li-named``
(LlamaIndex ``FunctionAgent`` with ``initial_tool_choice="price_of"``, the same prompt and tools), and
``lc-guarded-*`` / ``lc-named-*`` with one member alone (``SpecFuseChatModel(members=[...])``).

First-turn variants (``lc-first-*``) measure one model call, not a loop: ``bind_tools`` with both
tools and ``tool_choice="any"`` or ``"auto"``, the plain prompt and the task's question; success is
exactly one ``price_of`` call naming the item (:func:`first_turn_failure`). They count the spurious
second calls (``extra_call``) that a two-tool request can get.

Results are appended to a JSONL file (``--results``, default ``benchmarks/results/agents.jsonl``), one
line per (variant, task id); a re-run skips the pairs already there, so an interrupted run resumes.
Tasks run a few at a time (``--concurrency``) so that the ensemble's engine batches their requests.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paired import mcnemar_exact_p, wilson_interval, wins_losses

DEFAULT_RESULTS = "benchmarks/results/agents.jsonl"
SEED = 25

# -- tasks ------------------------------------------------------------------------------------------

_ONSETS = ["b", "br", "d", "dr", "f", "fl", "g", "gr", "k", "kl", "m", "n", "p", "pl", "qu", "s", "sk", "t",
           "tr", "v", "z", "zh"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "oo"]
_CODAS = ["b", "ck", "d", "g", "l", "m", "n", "p", "r", "t", "x", "z", "nt", "sh"]

QUESTIONS = [
    "How much do {q} {items} cost? Look up the price of one {item}, then multiply it by {q}.",
    "What is the total price in cents of {q} {items}?",
    "I want to buy {q} {items}. How many cents is that in total?",
    "Please tell me what {q} {items} cost altogether, in cents.",
    "A customer orders {q} {items}. What does the order cost in cents?",
    "Find the price of one {item} and tell me the cost of {q} of them.",
]
"""Phrasings; ``{items}`` is the plural. The first one spells out the steps (as the README example does)."""

UNKNOWN_RESULT = "unknown item: {item} is not in the price list"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(part) for part in (_ONSETS, _VOWELS, _CODAS, _VOWELS, _CODAS))


def plural(item: str) -> str:
    return item + ("es" if item.endswith(("s", "x", "z", "sh", "ch")) else "s")


@dataclass(frozen=True)
class AgentTask:
    id: str
    catalogue: dict[str, int]
    item: str
    quantity: int
    question: str

    @property
    def known(self) -> bool:
        return self.item in self.catalogue

    @property
    def price(self) -> int | None:
        return self.catalogue.get(self.item)

    @property
    def total(self) -> int | None:
        return None if self.price is None else self.price * self.quantity


def generate_tasks(n: int = 40, seed: int = SEED) -> list[AgentTask]:
    """``n`` tasks, the same for the same ``seed``; task ``i`` is drawn from its own seeded generator, so
    the first ``k`` tasks are the same whatever ``n`` is. Every fifth task (``i % 5 == 2``: 20%) asks
    for an item missing from its catalogue."""
    tasks = []
    for i in range(n):
        rng = random.Random(seed * 100_003 + i)
        size = rng.randint(4, 7)
        names: list[str] = []
        while len(names) < size:
            word = _word(rng)
            if word not in names:
                names.append(word)
        item = names.pop(rng.randrange(len(names)))
        catalogue = {name: rng.randint(2, 999) for name in names}
        if i % 5 != 2:
            catalogue[item] = rng.randint(2, 999)
        catalogue = dict(sorted(catalogue.items()))
        quantity = rng.randint(2, 60)
        question = rng.choice(QUESTIONS).format(q=quantity, item=item, items=plural(item))
        tasks.append(AgentTask(f"t{i:03d}", catalogue, item, quantity, question))
    return tasks


def lookup(catalogue: dict[str, int], item: str) -> str:
    """What ``price_of`` returns: the price in cents, or the unknown-item message."""
    key = str(item).strip().lower()
    for candidate in (key, key.removesuffix("es"), key.removesuffix("s")):
        if candidate in catalogue:
            return str(catalogue[candidate])
    return UNKNOWN_RESULT.format(item=str(item).strip())


def task_functions(task: AgentTask, named: bool = False) -> tuple[Callable[[str], str], Callable[[int, int], int]]:
    """The task's two tools as plain functions (docstrings are the tool descriptions); with ``named``
    the calculator's arguments are ``quantity`` and ``unit_price`` instead of ``a`` and ``b``."""

    def price_of(item: str) -> str:
        """Look up the price in cents of one item in the shop's price list."""
        return lookup(task.catalogue, item)

    def multiply(a: int, b: int) -> int:
        """Multiply two integers exactly and return the product."""
        return a * b

    def multiply_named(quantity: int, unit_price: int) -> int:
        """Multiply the quantity by the unit price exactly and return the total."""
        return quantity * unit_price

    return price_of, (multiply_named if named else multiply)


# -- scoring ----------------------------------------------------------------------------------------

_NOT_FOUND = re.compile(
    r"unknown|not (?:be )?found|not in |isn'?t in |is not listed|not listed|no price|not available|unavailable|"
    r"(?:do|does|did)(?: not|n'?t) (?:have|exist|know|find|carry|sell|list)|(?:could|can)(?: ?not|n'?t) (?:find|locate)|"
    r"no (?:such|item|record|information)|not (?:a )?(?:known|valid|recogni[sz]ed)|doesn'?t exist|does not exist",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` (``1,234`` is 1234)."""
    out = []
    for match in _NUMBER.findall(text):
        digits = match.rstrip(".,").replace(",", "")
        try:
            out.append(float(digits))
        except ValueError:
            continue
    return out


def says_not_found(text: str) -> bool:
    return bool(_NOT_FOUND.search(text))


def answer_correct(task: AgentTask, answer: str) -> bool:
    """The success rule of the module docstring."""
    found = numbers_in(answer)
    if task.known:
        total = task.total
        assert total is not None
        return any(x == total or abs(x * 100 - total) < 1e-6 for x in found)
    return says_not_found(answer) and all(x == task.quantity for x in found)


@dataclass
class Call:
    name: str
    args: dict[str, Any]
    result: str | None = None


def failure_mode(task: AgentTask, calls: Sequence[Call], answer: str | None, error: str | None = None) -> str | None:
    """``None`` for a success, else the first failure mode that applies (see the module docstring)."""
    if error and answer is None and "recursion" not in error.lower() and "max iterations" not in error.lower():
        return "error"
    lookups = [c for c in calls if c.name == "price_of"]
    item_keys = {task.item, plural(task.item)}
    looked_up = any(str(c.args.get("item", "")).strip().lower() in item_keys for c in lookups)
    if answer is not None and answer_correct(task, answer) and (task.known or looked_up):
        return None  # "not in the price list" counts only after the item itself was looked up
    if not calls:
        return "no_tool_call"
    if not lookups:
        return "skipped_lookup"
    if not looked_up:
        return "wrong_lookup"
    multiplies = [c for c in calls if c.name.startswith("multiply")]
    if answer is not None and not answer.strip() and not multiplies:
        return "empty_answer"
    if not task.known:
        if answer is not None and any(x != task.quantity for x in numbers_in(answer)):
            return "invented_price"
        if multiplies:
            return "invented_price"  # multiplied by a price it never got (the answer may be cut off)
        return "no_final_answer" if answer is None else "unknown_not_said"
    right = sorted([task.quantity, task.price or 0])
    if multiplies and not any(sorted(_ints(c.args)) == right for c in multiplies):
        return "wrong_arithmetic"
    if answer is None:
        return "no_final_answer"
    if not multiplies:
        return "skipped_multiply"
    return "missing_total"


def first_turn_failure(task: AgentTask, calls: Sequence[Call]) -> str | None:
    """The first model turn alone, with both tools offered: ``None`` when it is exactly one ``price_of``
    call naming the item asked for (singular or plural), else ``no_tool_call``, ``extra_call`` (more
    than one call: the calculator called before any price is known, or a second lookup),
    ``skipped_lookup`` (one call, not to ``price_of``) or ``wrong_lookup`` (the wrong item)."""
    if not calls:
        return "no_tool_call"
    if len(calls) > 1:
        return "extra_call"
    (call,) = calls
    if call.name != "price_of":
        return "skipped_lookup"
    if str(call.args.get("item", "")).strip().lower() not in {task.item, plural(task.item)}:
        return "wrong_lookup"
    return None


def _ints(args: dict[str, Any]) -> list[int]:
    out = []
    for value in args.values():
        try:
            out.append(int(float(value)))
        except (TypeError, ValueError):
            out.append(-1)
    return out


# -- results, resuming, report ----------------------------------------------------------------------


def load_results(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["variant"], row["task"])] = row
    return done


def outcome_mode(task: AgentTask, calls: Sequence[Call], answer: str | None, error: str | None,
                 first_turn: bool = False) -> str | None:  # fmt: skip
    """A run's failure mode (``None``: success): :func:`first_turn_failure` for a first-turn run (an
    error is ``"error"``), else :func:`failure_mode`."""
    if first_turn:
        return "error" if error else first_turn_failure(task, calls)
    return failure_mode(task, calls, answer, error)


def rescore(row: dict[str, Any], task: AgentTask) -> dict[str, Any]:
    calls = [Call(c["name"], dict(c["args"]), c.get("result")) for c in row.get("calls", [])]
    mode = outcome_mode(task, calls, row.get("answer"), row.get("error"), bool(row.get("first_turn")))
    return {**row, "success": mode is None, "mode": mode}


def summarize(results: dict[tuple[str, str], dict[str, Any]], tasks: Sequence[AgentTask],
              variants: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Per variant: N, successes, rate with Wilson interval, failure modes; paired McNemar tests on the
    tasks both variants have run. Success and failure mode are re-scored from the recorded calls and
    answer with the current scorer, so a scorer fix applies to old rows without re-running them."""
    ids = [t.id for t in tasks]
    known = {t.id: t.known for t in tasks}
    by_id = {t.id: t for t in tasks}
    results = {key: rescore(row, by_id[key[1]]) for key, row in results.items() if key[1] in by_id}
    rows = {}
    for v in variants:
        got = [results[(v, i)] for i in ids if (v, i) in results]
        if not got:
            continue
        k = sum(r["success"] for r in got)
        low, high = wilson_interval(k, len(got))
        rows[v] = {
            "n": len(got), "successes": k, "rate": k / len(got), "ci95": [low, high],
            "known": f"{sum(r['success'] for r in got if known[r['task']])}/{sum(known[r['task']] for r in got)}",
            "unknown": f"{sum(r['success'] for r in got if not known[r['task']])}/"
                       f"{sum(not known[r['task']] for r in got)}",
            "modes": dict(Counter(r["mode"] for r in got if not r["success"]).most_common()),
            "median_seconds": sorted(r["seconds"] for r in got)[len(got) // 2],
        }  # fmt: skip
    pairs = []
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = [t for t in ids if (a, t) in results and (b, t) in results]
            if not common:
                continue
            wins, losses = wins_losses((results[(a, t)]["success"], results[(b, t)]["success"]) for t in common)
            pairs.append({"a": a, "b": b, "n": len(common), "a_only": wins, "b_only": losses,
                          "mcnemar_p": mcnemar_exact_p(wins, losses)})  # fmt: skip
    return {"variants": rows, "paired": pairs}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| variant | N | success | rate (95% CI) | known | unknown | failure modes | median s/task |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in summary["variants"].items():
        modes = ", ".join(f"{m} {c}" for m, c in r["modes"].items()) or "-"
        lines.append(f"| {name} | {r['n']} | {r['successes']} | {100 * r['rate']:.0f}% "
                     f"[{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}] | {r['known']} | {r['unknown']} | "
                     f"{modes} | {r['median_seconds']:.0f} |")  # fmt: skip
    lines += ["", "| A vs B | N (paired) | only A right | only B right | McNemar exact p |", "|---|---|---|---|---|"]
    for p in summary["paired"]:
        lines.append(f"| {p['a']} vs {p['b']} | {p['n']} | {p['a_only']} | {p['b_only']} | {p['mcnemar_p']:.3g} |")
    return "\n".join(lines)
