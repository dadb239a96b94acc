"""SpecFuseLLM as a FunctionCallingLLM on the real default ensemble: a FunctionAgent with two tools, and
structured_predict / as_structured_llm with a small Pydantic model.

The question needs both tools, in order: the price of one item comes from a table (made-up numbers, so
no model can know them), the total from an exact calculator. Both members are tiny (SmolLM2-135M,
Qwen2.5-Coder-0.5B), decoding is greedy, and the agent is configured the way LlamaIndex offers for
weak models: ``initial_tool_choice`` forces the lookup on the first turn (the grammar then lets the
members choose only the argument), one call per turn, and the calculator returns its result directly
(``return_direct=True``), because after tool results these members repeat a call rather than write a
closing sentence. On failure the assertion message carries the whole transcript.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from specfuse_integrations.llama_index import SpecFuseLLM, SpecFuseResultEvent

pytestmark = pytest.mark.slow

PRICES = {"zorblat": 1234, "quibble": 87, "fennick": 15}
"""Dollars per item: made up, so the answer can only come from the tool."""

QUESTION = "How much do 56 zorblats cost? Look up the price of one zorblat, then multiply it by 56."
TOTAL = 56 * PRICES["zorblat"]  # 69104
SYSTEM = (
    "You are a shop assistant with two tools: price_of looks up the price of an item, "
    "multiply multiplies two numbers exactly. Use them, then answer."
)


def price_of(item: str) -> int:
    """Look up the price in dollars of one item in the shop's price list."""
    return PRICES[item.strip().lower().removesuffix("s")]


def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly and return the product."""
    return a * b


class Results(BaseEventHandler):
    """The raw answer of every LLM call (what the ensemble wrote, calls included)."""

    answers: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "Results"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, SpecFuseResultEvent):
            self.answers.append(event.text)


@pytest.fixture
def results():
    handler = Results(answers=[])
    get_dispatcher().add_event_handler(handler)
    yield handler
    get_dispatcher().event_handlers.remove(handler)


@pytest.fixture(scope="module")
def llm() -> SpecFuseLLM:
    return SpecFuseLLM(temperature=0, max_tokens=64)


def test_function_agent_answers_with_both_tools(llm: SpecFuseLLM, results: Results) -> None:
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(price_of), FunctionTool.from_defaults(multiply, return_direct=True)],
        llm=llm,
        system_prompt=SYSTEM,
        initial_tool_choice="price_of",
        allow_parallel_tool_calls=False,
    )

    async def run() -> tuple[AgentOutput, list[ToolCallResult]]:
        handler = agent.run(user_msg=QUESTION, max_iterations=4)
        calls = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        return await handler, calls

    output, calls = asyncio.run(run())
    log = "\n".join(
        [f"LLM wrote: {a!r}" for a in results.answers]
        + [f"tool {c.tool_name}({c.tool_kwargs}) -> {c.tool_output.content}" for c in calls]
        + [f"answer: {output.response.content!r}"]
    )
    print(log)
    assert [c.tool_name for c in calls] == ["price_of", "multiply"], log
    assert "zorblat" in calls[0].tool_kwargs["item"].lower(), log
    assert calls[0].tool_output.content == str(PRICES["zorblat"]), log
    assert sorted(calls[1].tool_kwargs.values()) == [56, PRICES["zorblat"]], log
    assert output.response.content == str(TOTAL), log


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


def test_structured_predict_and_structured_llm_extract_a_person(llm: SpecFuseLLM, results: Results) -> None:
    prompt = PromptTemplate("Extract the person from this text: {text}")
    person = llm.structured_predict(Person, prompt, text="Ada Lovelace is 36 years old.")
    print("structured_predict:", person, results.answers)
    assert isinstance(person, Person)
    assert person.name == "Ada Lovelace" and person.age == 36, results.answers

    from llama_index.core.base.llms.types import ChatMessage

    structured = llm.as_structured_llm(Person)
    response = structured.chat([ChatMessage(role="user", content="Extract the person: Grace Hopper is 85 years old.")])
    print("as_structured_llm:", response.raw, results.answers[-1])
    assert isinstance(response.raw, Person)
    assert response.raw.name == "Grace Hopper" and response.raw.age == 85, results.answers
