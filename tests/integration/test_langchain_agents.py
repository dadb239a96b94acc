"""Real agents on the real default ensemble: LangChain's ``create_agent`` and LangGraph's prebuilt
ReAct agent with two tools, an exact calculator and a lookup over a small offline table.

The question needs both tools, in order: the price of one item comes from the table (made-up
numbers, so no model can know them) and the total from the calculator; the agent must end with the
right total. Both members are tiny (SmolLM2-135M, Qwen2.5-Coder-0.5B), so the prompt spells out the
steps and the question names them, decoding is greedy and every turn has room for one whole call
(``parallel_tool_calls=False``: one call per turn). On failure the assertion message carries the
whole transcript. (Without the second sentence of the question, Qwen2.5-Coder-0.5B alone calls
``multiply(12, 1)`` after the lookup, and the ensemble repeats the lookup.)

Each agent runs twice: as is (strict xfail: after the total comes back, these members call multiply
again instead of writing a closing sentence), and with the calculator returning directly
(``return_direct=True``, what both frameworks offer for models that cannot close a tool loop, and
what the LlamaIndex agent test does too), where the agent ends with the total from the calculator.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, tool
from langgraph.errors import GraphRecursionError

from specfuse_integrations.langchain import SpecFuseChatModel

pytestmark = pytest.mark.slow

# Measured on the default ensemble (greedy, CPU), with this prompt and question: turn 1 calls
# price_of(item="apple") -> 37, turn 2 calls multiply(a=12, b=37) -> 444, and turn 3 calls
# multiply(a=12, b=444) again instead of answering; the loop goes on until the recursion limit. Telling
# it to call each tool once, to stop after multiply, or returning "12 * 37 = 444" from multiply did
# not change turn 3 (Qwen2.5-Coder-0.5B alone does the same). Since tool_vote="native" (the default)
# every call-or-answer decision follows Qwen2.5-Coder-0.5B, the one member trained to call tools, so
# the ensemble now does exactly what Qwen alone does (re-measured: multiply(12, 444), then
# multiply(12, 5328)). The assertions stay as the task demands; strict: the day the ensemble
# answers, XPASS fails and this marker must go. Only that known failure is expected (raises=): any other
# failure (a wrong lookup, a wrong product, a loop before the total) fails the test.


class KeepsCallingMultiply(Exception):
    """The known failure: both tools were called right and the total came back, then the agent called
    multiply again instead of answering."""


TWO_TOOL_TASK_TOO_HARD = pytest.mark.xfail(
    strict=True,
    raises=KeepsCallingMultiply,
    reason="the tiny default ensemble keeps calling multiply after it returned the total (see comment)",
)

PRICES = {"apple": 37, "banana": 12, "cherry": 91}
"""Cents per item: made up, so the answer can only come from the tool."""

QUESTION = "How much do 12 apples cost? Look up the price of one apple, then multiply it by 12."
TOTAL = 12 * PRICES["apple"]  # 444
SYSTEM = (
    "You are a shop assistant. Answer in three steps: first call price_of to get the price of one item, "
    "then call multiply with the quantity and that price, then reply with the total price in cents."
)


@tool
def price_of(item: str) -> int:
    """Look up the price in cents of one item (apple, banana or cherry)."""
    return PRICES[item.strip().lower().removesuffix("s")]


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly and return the product."""
    return a * b


multiply_returning_directly = StructuredTool.from_function(multiply.func, return_direct=True)
"""The same calculator, ending the agent's loop with its result."""


@pytest.fixture(scope="module")
def llm() -> SpecFuseChatModel:
    return SpecFuseChatModel(temperature=0, max_tokens=48, segment_tokens=8, parallel_tool_calls=False)


def transcript(messages: list[BaseMessage]) -> str:
    lines = []
    for message in messages:
        calls = [(c["name"], c["args"]) for c in getattr(message, "tool_calls", [])]
        invalid = [(c["name"], c["args"]) for c in getattr(message, "invalid_tool_calls", [])]
        lines.append(f"{type(message).__name__}: {message.content!r}" + (f" calls={calls}" if calls else "")
                     + (f" invalid={invalid}" if invalid else ""))  # fmt: skip
    return "\n".join(lines)


def check_two_tool_answer(messages: list[BaseMessage], *, direct: bool = False) -> None:
    """Both tools were called with the right arguments, their results came back, and the final answer
    (an AIMessage without calls; with ``direct``, the calculator's result) states the total."""
    log = transcript(messages)
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    results = {m.name: m.content for m in messages if isinstance(m, ToolMessage) and m.status != "error"}
    assert any(c["name"] == "price_of" and "apple" in str(c["args"].get("item", "")).lower() for c in calls), log
    assert results.get("price_of") == str(PRICES["apple"]), log
    assert any(
        c["name"] == "multiply" and sorted(c["args"].values()) == sorted([12, PRICES["apple"]]) for c in calls
    ), log
    if not direct:  # the known failure: the total came back, then a later turn called multiply again
        totals = [i for i, m in enumerate(messages) if isinstance(m, ToolMessage) and m.name == "multiply"
                  and m.status != "error" and m.content == str(TOTAL)]  # fmt: skip
        after = messages[totals[0] :] if totals else []
        if any(c["name"] == "multiply" for m in after if isinstance(m, AIMessage) for c in m.tool_calls):
            raise KeepsCallingMultiply(log)
    assert results.get("multiply") == str(TOTAL), log
    final = messages[-1]
    if direct:
        assert isinstance(final, ToolMessage) and final.name == "multiply" and final.content == str(TOTAL), log
        return
    assert isinstance(final, AIMessage) and not final.tool_calls, log
    assert str(TOTAL) in final.text, log


def create_langchain_agent(llm: SpecFuseChatModel, tools: list[BaseTool]) -> Any:
    from langchain.agents import create_agent

    return create_agent(llm, tools=tools, system_prompt=SYSTEM)


def create_langgraph_agent(llm: SpecFuseChatModel, tools: list[BaseTool]) -> Any:
    with warnings.catch_warnings():  # LangGraph 1.x points to langchain.agents.create_agent
        warnings.simplefilter("ignore", DeprecationWarning)
        from langgraph.prebuilt import create_react_agent

        return create_react_agent(llm, tools=tools, prompt=SYSTEM)


@pytest.mark.parametrize("create", [create_langchain_agent, create_langgraph_agent], ids=["create_agent", "langgraph"])
def test_agent_answers_with_both_tools_when_the_calculator_returns_directly(llm: SpecFuseChatModel, create) -> None:
    agent = create(llm, [price_of, multiply_returning_directly])
    state: dict[str, Any] = agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 8})
    print(transcript(state["messages"]))
    check_two_tool_answer(state["messages"], direct=True)
    assert sum(isinstance(m, AIMessage) for m in state["messages"]) == 2  # one call per turn, no extra turn


def run_and_check_two_tool_answer(agent: Any) -> None:
    """Run the agent to its end or its recursion limit, then check the messages it got to.

    Streaming keeps the state reached before a GraphRecursionError, so that the known loop (multiply
    again after the total) is told apart from any other failure."""
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    looped: GraphRecursionError | None = None
    try:
        for state in agent.stream({"messages": messages}, {"recursion_limit": 8}, stream_mode="values"):
            messages = state["messages"]
    except GraphRecursionError as error:
        looped = error
    print(transcript(messages))
    check_two_tool_answer(messages)  # raises KeepsCallingMultiply for the known loop
    if looped is not None:
        raise looped


@TWO_TOOL_TASK_TOO_HARD
def test_create_agent_answers_with_both_tools(llm: SpecFuseChatModel) -> None:
    run_and_check_two_tool_answer(create_langchain_agent(llm, [price_of, multiply]))


@TWO_TOOL_TASK_TOO_HARD
def test_langgraph_prebuilt_agent_answers_with_both_tools(llm: SpecFuseChatModel) -> None:
    run_and_check_two_tool_answer(create_langgraph_agent(llm, [price_of, multiply]))


@pytest.mark.parametrize(
    "question, item",
    [("What does one cherry cost?", "cherry"), ("I need 7 bananas. How many cents is that in total?", "banana")],
)
def test_two_tools_bound_with_any_give_one_lookup_and_no_second_call(question: str, item: str) -> None:
    # The library's defaults and the standard parameters only. Before the end after a call's
    # arguments was allowed, the ensemble added a second call here (multiply(a=1, b=2), multiply(7, 1)).
    bound = SpecFuseChatModel(temperature=0).bind_tools([price_of, multiply], tool_choice="any")
    message = bound.invoke([HumanMessage(question)])
    calls = [(c["name"], c["args"]) for c in message.tool_calls]
    assert len(calls) == 1 and not message.invalid_tool_calls, calls
    name, args = calls[0]
    assert name == "price_of" and str(args.get("item", "")).strip().lower().removesuffix("s") == item, calls
