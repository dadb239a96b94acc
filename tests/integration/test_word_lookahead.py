"""The drafter's look-ahead token that decides word ends on a tiny random model.

Random weights give gibberish, so these tests check the mechanism: ``next_text`` is exactly what one
more greedy step adds, and reusing the look-ahead logits in the next draft changes nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from specfuse_core import Ensemble, FusionConfig, HFMember
from specfuse_core.member import SamplingParams
from tiny_models import build_tiny_model

MESSAGES = [{"role": "user", "content": "Where is Paris?"}]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, seed=None)


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    return HFMember(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "a", vocab_size=300, seed=1)), name="tiny")


def draft(member: HFMember, tokens: int, accepted: str = "", cache: bool = True):
    async def go():
        session = await member.open_session(MESSAGES, cache=cache)
        session.accept(accepted)
        return session, await session.draft(tokens, GREEDY)

    return asyncio.run(go())


def test_next_text_is_what_one_more_greedy_token_adds(member):
    checked = 0
    for n in (1, 3, 6):
        _, short = draft(member, n)
        _, longer = draft(member, n + 1)
        assert short.hit_budget == (short.tokens == n and not short.ended)
        if not short.hit_budget:
            assert short.next_text is None
        elif longer.text.startswith(short.text) and len(longer.text) > len(short.text):
            assert short.next_text == longer.text[len(short.text) :]
            checked += 1
    assert checked, "the test needs drafts that hit the budget"


def test_lookahead_logits_reused_by_the_next_draft_change_nothing(member):
    async def two_rounds(cache: bool):
        session = await member.open_session(MESSAGES, cache=cache)
        first = await session.draft(4, GREEDY)
        session.accept(first.text)  # the member's own draft wins whole: the look-ahead is reused
        second = await session.draft(4, GREEDY)
        return first, second

    cached = asyncio.run(two_rounds(True))
    uncached = asyncio.run(two_rounds(False))
    assert [d.text for d in cached] == [d.text for d in uncached]
    assert [d.next_text for d in cached] == [d.next_text for d in uncached]


def test_ensemble_with_lookahead_matches_without_cache(member, tmp_path_factory):
    other = HFMember(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "b", vocab_size=420, seed=2)), name="b")
    ens = Ensemble([member, other], FusionConfig(segment_tokens=5, max_tokens=40, temperature=0))
    cached, uncached = ens.generate(MESSAGES), ens.generate(MESSAGES, cache=False)
    assert cached.text == uncached.text
    def candidates(result):
        return [[c.text for c in e.candidates] for e in result.trace]

    assert candidates(cached) == candidates(uncached)
