"""Agent benchmark runner: the variants (LangChain ``create_agent``, LlamaIndex ``FunctionAgent``, on the
default ensemble or one member alone) over the tasks of :mod:`specfuse_eval.agents`, whose module
docstring describes the tasks, the success rule and the failure modes. Run from the repo root:

    nice -n 10 .venv/bin/python -m benchmarks.agents --json   # every variant: 40 tasks (DEFAULT_LIMITS: fewer)
    .venv/bin/python -m benchmarks.agents --report-only       # the tables from the results file
    nice -n 10 .venv/bin/python -m benchmarks.agents --first-turn --json   # one call with both tools bound

The numbers are in ``benchmarks/README.md`` ("Agents"). The runner lives here, not in ``specfuse_eval``,
because it drives the front doors (``specfuse_integrations``), which the evaluation harness never
imports (``tests/unit/test_layering.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specfuse_eval.agents import (
    DEFAULT_RESULTS,
    SEED,
    AgentTask,
    Call,
    generate_tasks,
    load_results,
    markdown,
    outcome_mode,
    summarize,
    task_functions,
)

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"

# -- variants ---------------------------------------------------------------------------------------

PLAIN_SYSTEM = "You are a shop assistant. Use the tools to answer the customer's question."
README_SYSTEM = (
    "You are a shop assistant. Answer in three steps: first call price_of to get the price of one item, "
    "then call multiply with the quantity and that price, then reply with the total price in cents."
)
"""The README's prompt (and tests/integration/test_langchain_agents.py's)."""
GUARDED_SYSTEM = (
    "You are a shop assistant. First call price_of to get the price of one item. If price_of answers "
    "that the item is unknown, do not call multiply: reply that the item is not in the price list. "
    "Otherwise call multiply with the quantity and that price, then reply with the total price in cents."
)
"""The README prompt plus what to do when the lookup fails."""
NAMED_SYSTEM = GUARDED_SYSTEM.replace("with the quantity and that price", "with the quantity and that unit price")


@dataclass(frozen=True)
class Variant:
    name: str
    framework: str  # "langchain" or "llama_index"
    system: str
    members: tuple[str, ...] | None = None  # None: the default ensemble
    return_direct: bool = False  # the calculator ends the loop with its result
    force_lookup: bool = False  # the first model call must call price_of (tool_choice)
    named_args: bool = False  # multiply(quantity, unit_price) instead of multiply(a, b)
    first_turn: str | None = None  # only the first model call, with this tool_choice (no agent loop)
    description: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("lc-plain", "langchain", PLAIN_SYSTEM, description="create_agent, both tools, plain prompt"),
        Variant("lc-readme", "langchain", README_SYSTEM, return_direct=True,
                description="create_agent as in README.md: three-step prompt, multiply return_direct"),
        Variant("lc-guarded", "langchain", GUARDED_SYSTEM, return_direct=True, force_lookup=True,
                description="README pattern + unknown-item rule in the prompt + first call forced to price_of"),
        Variant("lc-named", "langchain", NAMED_SYSTEM, return_direct=True, force_lookup=True, named_args=True,
                description="lc-guarded with multiply(quantity, unit_price) instead of multiply(a, b)"),
        Variant("li-guarded", "llama_index", GUARDED_SYSTEM, return_direct=True, force_lookup=True,
                description="FunctionAgent, the same: initial_tool_choice='price_of', multiply return_direct"),
        Variant("lc-guarded-smollm2", "langchain", GUARDED_SYSTEM, members=(SMOL,), return_direct=True,
                force_lookup=True, description="lc-guarded with SmolLM2-135M alone"),
        Variant("lc-guarded-qwen", "langchain", GUARDED_SYSTEM, members=(QWEN,), return_direct=True,
                force_lookup=True, description="lc-guarded with Qwen2.5-Coder-0.5B alone"),
        Variant("li-named", "llama_index", NAMED_SYSTEM, return_direct=True, force_lookup=True, named_args=True,
                description="FunctionAgent, as lc-named: initial_tool_choice='price_of', multiply(quantity, unit_price)"),
        Variant("lc-named-smollm2", "langchain", NAMED_SYSTEM, members=(SMOL,), return_direct=True,
                force_lookup=True, named_args=True, description="lc-named with SmolLM2-135M alone"),
        Variant("lc-named-qwen", "langchain", NAMED_SYSTEM, members=(QWEN,), return_direct=True,
                force_lookup=True, named_args=True, description="lc-named with Qwen2.5-Coder-0.5B alone"),
        *[Variant(f"lc-first-{choice}{suffix}", "langchain", PLAIN_SYSTEM, members=members, first_turn=choice,
                  description=f"one call: bind_tools(both tools, tool_choice={choice!r}).invoke(question){who}")
          for choice in ("any", "auto")
          for suffix, members, who in (("", None, ""), ("-qwen", (QWEN,), ", Qwen2.5-Coder-0.5B alone"),
                                       ("-smollm2", (SMOL,), ", SmolLM2-135M alone"))],
    ]
}  # fmt: skip
DEFAULT_VARIANTS = ["lc-named", "lc-named-qwen", "lc-named-smollm2", "lc-readme", "lc-guarded", "li-named",
                    "lc-guarded-qwen", "lc-guarded-smollm2", "li-guarded", "lc-plain"]  # fmt: skip
"""Every variant, most important first (each chunk of tasks runs them in this order)."""
FIRST_TURN_VARIANTS = [v for v in VARIANTS if VARIANTS[v].first_turn]
"""One model call each (``--first-turn``), in a results file of their own."""
FIRST_TURN_RESULTS = str(Path(DEFAULT_RESULTS).with_name("agents-first-turn.jsonl"))
DEFAULT_LIMITS = {"li-guarded": 16, "lc-plain": 16}
"""The N of benchmarks/README.md (the variants not named here run all tasks): lc-plain runs to the
recursion limit, ~7 minutes per 8 tasks on 2 CPU cores, and li-guarded is superseded by li-named."""
RECURSION_LIMIT = 12
"""LangGraph steps: a model turn and a tool turn are one step each, so up to 6 model turns per task."""
MAX_ITERATIONS = 6
"""LlamaIndex FunctionAgent turns, the same budget."""
MAX_TOKENS = 128


@dataclass
class Outcome:
    variant: str
    task: str
    success: bool
    mode: str | None
    answer: str | None
    calls: list[Call] = field(default_factory=list)
    turns: int = 0
    seconds: float = 0.0
    error: str | None = None
    first_turn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _model(framework: str, members: tuple[str, ...] | None) -> Any:
    """One chat model / LLM per (framework, members), shared by the tasks of every variant that uses it."""
    # temperature=0: greedy, so every variant answers each task reproducibly and the paired
    # comparison is between configurations, not samples. max_tokens=128 instead of 512: a turn here
    # is one call or one sentence, and on CPU a member that rambles to 512 tokens costs ~100 s a
    # turn (measured); a cut answer is scored as it stands. Everything else: the library's defaults.
    options = {"members": list(members) if members else None, "temperature": 0, "max_tokens": MAX_TOKENS}
    if framework == "langchain":
        from specfuse_integrations.langchain import SpecFuseChatModel

        return SpecFuseChatModel(**options)
    from specfuse_integrations.llama_index import SpecFuseLLM

    return SpecFuseLLM(**options)


async def run_langchain(variant: Variant, task: AgentTask) -> Outcome:
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import StructuredTool
    from langgraph.errors import GraphRecursionError

    price_fn, multiply_fn = task_functions(task, variant.named_args)
    tools = [StructuredTool.from_function(price_fn),
             StructuredTool.from_function(multiply_fn, return_direct=variant.return_direct)]  # fmt: skip
    middleware = []
    if variant.force_lookup:

        @wrap_model_call
        async def lookup_first(request: Any, handler: Any) -> Any:
            if not any(isinstance(m, ToolMessage) for m in request.messages):
                request = request.override(tool_choice="price_of")
            return await handler(request)

        middleware.append(lookup_first)
    agent = create_agent(_model("langchain", variant.members), tools=tools, system_prompt=variant.system,
                         middleware=middleware)  # fmt: skip
    messages: list[Any] = [HumanMessage(task.question)]
    error = None
    start = time.monotonic()
    try:
        async for state in agent.astream({"messages": messages}, {"recursion_limit": RECURSION_LIMIT},
                                         stream_mode="values"):  # fmt: skip
            messages = state["messages"]
    except GraphRecursionError as e:
        error = f"recursion limit: {e}"[:300]
    except Exception as e:  # noqa: BLE001 - recorded as the task's failure
        error = f"{type(e).__name__}: {e}"[:300]
    seconds = time.monotonic() - start
    calls: list[Call] = []
    by_id: dict[str, Call] = {}
    for m in messages:
        if isinstance(m, AIMessage):
            for c in m.tool_calls:
                call = Call(c["name"], dict(c["args"]))
                calls.append(call)
                by_id[c.get("id") or ""] = call
        elif isinstance(m, ToolMessage) and m.tool_call_id in by_id:
            by_id[m.tool_call_id].result = str(m.content)
    answer = None
    last = messages[-1]
    if error is None:
        if isinstance(last, AIMessage) and not last.tool_calls:
            answer = last.text
        elif isinstance(last, ToolMessage):  # return_direct
            answer = str(last.content)
    turns = sum(isinstance(m, AIMessage) for m in messages)
    return _outcome(variant, task, calls, answer, turns, seconds, error)


async def run_first_turn(variant: Variant, task: AgentTask) -> Outcome:
    """One model call with both tools bound: what a two-tool request gets, without an agent loop."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.tools import StructuredTool

    price_fn, multiply_fn = task_functions(task, variant.named_args)
    tools = [StructuredTool.from_function(price_fn), StructuredTool.from_function(multiply_fn)]
    model = _model("langchain", variant.members).bind_tools(tools, tool_choice=variant.first_turn)
    start = time.monotonic()
    try:
        message = await model.ainvoke([SystemMessage(variant.system), HumanMessage(task.question)])
    except Exception as e:  # noqa: BLE001 - recorded as the task's failure
        return _outcome(variant, task, [], None, 1, time.monotonic() - start, f"{type(e).__name__}: {e}"[:300])
    calls = [Call(c["name"], dict(c["args"])) for c in message.tool_calls]
    return _outcome(variant, task, calls, message.text, 1, time.monotonic() - start, None)


async def run_llama_index(variant: Variant, task: AgentTask) -> Outcome:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
    from llama_index.core.tools import FunctionTool

    price_fn, multiply_fn = task_functions(task, variant.named_args)
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(price_fn),
               FunctionTool.from_defaults(multiply_fn, return_direct=variant.return_direct)],
        llm=_model("llama_index", variant.members),
        system_prompt=variant.system,
        initial_tool_choice="price_of" if variant.force_lookup else None,
        allow_parallel_tool_calls=False,
    )  # fmt: skip
    calls: list[Call] = []
    answer = None
    error = None
    start = time.monotonic()
    try:
        handler = agent.run(user_msg=task.question, max_iterations=MAX_ITERATIONS)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                calls.append(Call(event.tool_name, dict(event.tool_kwargs), str(event.tool_output.content)))
        output = await handler
        answer = str(output.response.content or "")
    except Exception as e:  # noqa: BLE001 - includes the max-iterations error
        error = f"{type(e).__name__}: {e}"[:300]
    seconds = time.monotonic() - start
    return _outcome(variant, task, calls, answer, len(calls) + (answer is not None), seconds, error)


def _outcome(variant: Variant, task: AgentTask, calls: list[Call], answer: str | None, turns: int,
             seconds: float, error: str | None) -> Outcome:  # fmt: skip
    mode = outcome_mode(task, calls, answer, error, variant.first_turn is not None)
    return Outcome(variant.name, task.id, mode is None, mode, answer, calls, turns, round(seconds, 1), error,
                   first_turn=variant.first_turn is not None)  # fmt: skip


async def run_task(variant: Variant, task: AgentTask) -> Outcome:
    if variant.first_turn:
        return await run_first_turn(variant, task)
    if variant.framework == "langchain":
        return await run_langchain(variant, task)
    return await run_llama_index(variant, task)


async def run_all(variants: Sequence[Variant], tasks: Sequence[AgentTask], limits: dict[str, int], path: Path,
                  concurrency: int, chunk: int, log: Callable[[str], None]) -> None:  # fmt: skip
    """Tasks in chunks of ``chunk``; in each chunk every variant in turn (``concurrency`` tasks at once),
    so that an interrupted run has about the same N in every variant."""
    done = load_results(path)
    for begin in range(0, len(tasks), chunk):
        for variant in variants:
            todo = [t for t in tasks[begin : begin + chunk] if (variant.name, t.id) not in done
                    and int(t.id[1:]) < limits.get(variant.name, len(tasks))]  # fmt: skip
            if todo:
                log(f"{variant.name}: tasks {todo[0].id}..{todo[-1].id} ({len(todo)})")
            for start in range(0, len(todo), concurrency):
                outcomes = await asyncio.gather(*(run_task(variant, t) for t in todo[start : start + concurrency]))
                with path.open("a") as f:
                    for outcome in outcomes:
                        f.write(json.dumps(outcome.to_dict()) + "\n")
                        log(f"  {variant.name} {outcome.task}: {'ok' if outcome.success else outcome.mode} "
                            f"({outcome.seconds:.0f} s, {outcome.turns} turns) {outcome.answer!r:.80}")  # fmt: skip


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40, help="number of generated tasks (default 40)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, in order (default all: {', '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--limit",
        default="",
        help="per-variant task limits over the defaults, e.g. 'lc-plain=20,li-guarded=40' "
        f"(defaults: {','.join(f'{k}={v}' for k, v in DEFAULT_LIMITS.items())}, all tasks for the others)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="tasks of one variant run at once, batched by the engine (default 8)"
    )
    parser.add_argument(
        "--chunk", type=int, default=8, help="tasks per round: each round runs every variant on its tasks (default 8)"
    )
    parser.add_argument(
        "--first-turn", action="store_true",
        help=f"run the first-turn variants ({', '.join(FIRST_TURN_VARIANTS)}) instead, into {FIRST_TURN_RESULTS}",
    )
    parser.add_argument("--results", default=None, help=f"JSONL file (default {DEFAULT_RESULTS})")
    parser.add_argument("--report-only", action="store_true", help="summarize the results file, run nothing")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    tasks = generate_tasks(args.tasks, args.seed)
    variants = FIRST_TURN_VARIANTS if args.first_turn else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    limits = {**DEFAULT_LIMITS, **{k: int(v) for k, v in (p.split("=") for p in args.limit.split(",") if p.strip())}}
    path = Path(args.results or (FIRST_TURN_RESULTS if args.first_turn else DEFAULT_RESULTS))
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not args.report_only:
        asyncio.run(run_all([VARIANTS[v] for v in variants], tasks, limits, path, args.concurrency, args.chunk, log))
    summary = summarize(load_results(path), tasks, variants)
    print(markdown(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks.agents"))
