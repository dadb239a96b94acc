"""The round loop with scripted members: selection, consensus, budget, stops, failures, policies."""

import asyncio

import pytest

from scripted import ScriptedMember
from specfuse_core import (
    ConfigError,
    Ensemble,
    FusionConfig,
    InvalidRequestError,
    NoActiveMembersError,
    NotSupportedYetError,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def likes(word: str, high: float = 0.9, low: float = 0.1):
    return lambda accepted, text, ends: high if word in text else low


def test_winner_is_the_candidate_the_scorers_prefer():
    a = ScriptedMember("a", [("alpha one", False), ("done", True)], prob=likes("beta"))
    b = ScriptedMember("b", [("beta two", False), ("done", True)], prob=likes("beta"))
    result = Ensemble([a, b], FusionConfig(temperature=0)).generate(MESSAGES)
    first = result.trace[0]
    assert [c.text for c in first.candidates] == ["alpha one", "beta two"]
    assert first.winners == ("b",)
    assert first.scorers == ("a", "b")
    assert first.totals == pytest.approx((0.1, 0.9))
    assert result.trace[1].consensus and result.trace[1].candidates[0].ends
    assert result.text == "beta twodone"
    assert result.finish_reason == "stop"
    assert result.summary()["wins"] == {"a": 1, "b": 2}


def test_consensus_skips_verification():
    a = ScriptedMember("a", [("same", True)])
    b = ScriptedMember("b", [("same", True)])
    result = Ensemble([a, b]).generate(MESSAGES)
    assert result.trace[0].consensus and result.trace[0].winners == ("a", "b")
    assert all(s.score_calls == 0 for m in (a, b) for s in m.sessions)
    assert {c.kind for c in result.trace[0].calls} == {"draft"}


def test_stop_string_truncates_and_finishes():
    a = ScriptedMember("a", [("hello STOP there", False)])
    result = Ensemble([a]).generate(MESSAGES, stop=["STOP"])
    assert result.text == "hello " and result.finish_reason == "stop"


def test_token_budget_gives_length():
    a = ScriptedMember("a", [("w1 w2 w3 ", False)])
    result = Ensemble([a], FusionConfig(segment_tokens=3, max_tokens=7)).generate(MESSAGES)
    assert result.finish_reason == "length"
    assert result.text.split() == ["w1", "w2", "w3", "w1", "w2", "w3", "w1"]


def test_rounds_that_add_no_tokens_cannot_loop_forever():
    a = ScriptedMember("a", [("x", False)])  # "x" + "x" counts as one word: the budget never fills
    result = Ensemble([a], FusionConfig(max_tokens=5)).generate(MESSAGES)
    assert result.finish_reason == "length" and result.rounds == 5


def test_failing_member_exits_and_request_completes():
    a = ScriptedMember("a", [("alpha", False), ("end", True)], prob=likes("alpha"))
    b = ScriptedMember("b", [("beta", False)], fail_on="draft", fail_after=1)
    result = Ensemble([a, b]).generate(MESSAGES)
    assert result.finish_reason == "stop"
    assert [x.member for x in result.exits] == ["b"]
    assert "TimeoutError" in result.exits[0].reason and result.exits[0].round == 2
    assert result.trace[1].exits == result.exits and result.trace[1].active == ("a",)


def test_unreachable_member_at_open_exits_with_reason():
    a = ScriptedMember("a", [("fine", True)])
    b = ScriptedMember("b", [("x", True)], fail_on="open")
    result = Ensemble([a, b]).generate(MESSAGES)
    assert result.text == "fine" and "unreachable" in result.exits[0].reason


def test_no_drafter_left_names_the_failure():
    a = ScriptedMember("a", [("x", True)], fail_on="open")
    b = ScriptedMember("b", [("y", True)], role="score")
    with pytest.raises(NoActiveMembersError, match="a: ConnectionError: a is unreachable"):
        Ensemble([a, b]).generate(MESSAGES)


def test_score_only_judge_decides():
    a = ScriptedMember("a", [("left", True)], role="draft")
    b = ScriptedMember("b", [("right", True)], role="draft")
    judge = ScriptedMember("judge", [("", True)], role="score", prob=likes("right"))
    result = Ensemble([a, b, judge]).generate(MESSAGES)
    assert result.text == "right" and result.trace[0].scorers == ("judge",)


def test_exclude_self_scores():
    # Each member loves its own draft; only cross-votes should count when excluded.
    a = ScriptedMember("a", [("alpha", True)], prob=lambda r, t, e: 0.9 if t == "alpha" else 0.5)
    b = ScriptedMember("b", [("beta", True)], prob=lambda r, t, e: 0.9 if t == "beta" else 0.2)
    result = Ensemble([a, b], FusionConfig(exclude_self_scores=True)).generate(MESSAGES)
    # a's only vote goes to beta, b's only vote to alpha: a tie broken by self-score (a 0.9 = b 0.9), then order.
    assert result.trace[0].totals == pytest.approx((0.5, 0.5))
    assert result.text == "alpha"
    kept = Ensemble([a, b]).generate(MESSAGES)
    assert kept.trace[0].totals == pytest.approx((0.5 * 0.9 / 1.4 + 0.5 * 0.2 / 1.1, 0.5 * 0.5 / 1.4 + 0.5 * 0.9 / 1.1))


def test_model_exit_drops_constant_loser_but_never_the_leader_and_goes_solo():
    good = ScriptedMember("good", [("good w", False)] * 12 + [("end", True)], prob=likes("good"))
    bad = ScriptedMember("bad", [("bad w", False)], prob=likes("good"))
    config = FusionConfig(exit=True, exit_min_rounds=3, max_tokens=200)
    result = Ensemble([good, bad], config).generate(MESSAGES)
    assert [x.member for x in result.exits] == ["bad"]
    record = result.exits[0]
    assert record.round == 3 and record.p is not None and record.p < 0.25 and record.entropy < 0.6
    solo_rounds = [e for e in result.trace if e.solo]
    assert solo_rounds and all(e.active == ("good",) and not e.scorers for e in solo_rounds)
    assert bad.sessions[0].draft_calls == 3  # nothing after its exit
    assert result.summary()["calls_per_round"] < 4


def test_exit_counts_rounds_won_by_default_but_scores_when_asked():
    # Both scorers prefer "good" by a hair: the loser loses every round, but by 0.51/0.49.
    def make() -> list[ScriptedMember]:
        return [ScriptedMember("good", [("good w", False)] * 8 + [("end", True)], prob=likes("good", 0.90, 0.86)),
                ScriptedMember("bad", [("bad w", False)], prob=likes("good", 0.90, 0.86))]  # fmt: skip

    by_wins = Ensemble(make(), FusionConfig(exit=True, max_tokens=200)).generate(MESSAGES)
    assert [(x.member, x.round, x.reason) for x in by_wins.exits] == [("bad", 3, "low cumulative wins")]
    by_scores = Ensemble(make(), FusionConfig(exit=True, exit_quality="scores", max_tokens=200)).generate(MESSAGES)
    assert by_scores.exits == () and by_scores.rounds == 9
    assert by_scores.trace[0].totals == pytest.approx((0.90 / 1.76, 0.86 / 1.76))
    low_temperature = FusionConfig(exit=True, exit_quality="scores", exit_temperature=0.05, max_tokens=200)
    assert [x.member for x in Ensemble(make(), low_temperature).generate(MESSAGES).exits] == ["bad"]


def test_hedge_weights_follow_the_formula():
    a = ScriptedMember("a", [("alpha", False), ("alpha", True)], prob=likes("alpha"))
    b = ScriptedMember("b", [("beta", False), ("beta", True)], prob=likes("alpha"))
    result = Ensemble([a, b], FusionConfig(weights=True, weights_eta0=1.0)).generate(MESSAGES)
    # Round 1: r_a = 1 (b ranks alpha above beta), r_b = 0; eta = 1/sqrt(2)/1.
    import math

    eta = 1 / math.sqrt(2)
    w_a = math.exp(eta) / (math.exp(eta) + 1)
    assert result.trace[0].weights == pytest.approx({"a": 0.5, "b": 0.5})
    assert result.trace[1].weights == pytest.approx({"a": w_a, "b": 1 - w_a})


def test_keep_weights_carries_across_requests():
    a = ScriptedMember("a", [("alpha", True)], prob=likes("alpha"))
    b = ScriptedMember("b", [("beta", True)], prob=likes("alpha"))
    ens = Ensemble([a, b], FusionConfig(weights=True, keep_weights=True))
    ens.generate(MESSAGES)
    assert ens.weights["a"] > 0.5
    fresh = Ensemble([a, b], FusionConfig(weights=True))
    fresh.generate(MESSAGES)
    assert fresh.weights == {"a": 0.5, "b": 0.5}


def test_stream_yields_each_segment_and_result():
    a = ScriptedMember("a", [("one ", False), ("two", True)])
    stream = Ensemble([a]).stream(MESSAGES)
    texts = [e.text for e in stream]
    assert texts == ["one ", "two"] and stream.result.text == "one two"
    assert stream.result.trace[-1].finish_reason == "stop"


async def test_async_twins_inside_running_loop():
    a = ScriptedMember("a", [("x", True)])
    ens = Ensemble([a])
    assert (await ens.agenerate(MESSAGES)).text == "x"
    events = [e async for e in ens.astream(MESSAGES)]
    assert [e.text for e in events] == ["x"]
    # The sync API still works from inside a running event loop (e.g. Jupyter).
    assert ens.generate(MESSAGES).text == "x"


def test_sessions_are_closed_even_when_stream_is_abandoned():
    a = ScriptedMember("a", [("w ", False)])
    stream = Ensemble([a], FusionConfig(max_tokens=100)).stream(MESSAGES)
    next(stream)
    stream.close()
    assert a.sessions[0].closed


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Ensemble([]), "at least one member"),
        (lambda: Ensemble([ScriptedMember("a", [("x", True)]), ScriptedMember("a", [("x", True)])]), "duplicate"),
        (lambda: Ensemble([ScriptedMember("a", [("x", True)], role="score")]), "no drafter"),
        (lambda: Ensemble([ScriptedMember("a", [("x", True)], role="draft")]), "no scorer"),
    ],
)
def test_bad_ensembles(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_bad_requests():
    ens = Ensemble([ScriptedMember("a", [("x", True)])])
    with pytest.raises(InvalidRequestError, match="empty"):
        ens.generate([])
    with pytest.raises(InvalidRequestError, match="unknown role"):
        ens.generate([{"role": "robot", "content": "x"}])
    with pytest.raises(ConfigError, match="segment_tokens"):
        ens.generate(MESSAGES, segment_tokens=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        ens.generate(MESSAGES, max_tokens=0)


def test_unreachable_remote_spec_gives_a_clear_error():
    # http specs build a remote member (no request yet); an unreachable server fails the request with
    # an error that names the member and the reason instead of NotSupportedYetError.
    ens = Ensemble.from_specs(["http://127.0.0.1:9/v1#tiny"], share=False, max_retries=0, timeout=2.0)
    assert type(ens.members[0]).__name__ == "OpenAICompatibleMember"
    with pytest.raises(NoActiveMembersError, match=r"tiny@127\.0\.0\.1:9: RemoteError: .*could not reach the server"):
        ens.generate([{"role": "user", "content": "hi"}], max_tokens=4)
    from specfuse_core.loading import resolve_source

    with pytest.raises(NotSupportedYetError):  # a local HFMember still cannot load a URL
        resolve_source("http://127.0.0.1:9/v1")


def test_member_notes_reach_the_result():
    a = ScriptedMember("a", [("x", True)])
    a.notes = ["draft-only: the server cannot score given text"]  # type: ignore[attr-defined]
    result = Ensemble([a, ScriptedMember("b", [("x", True)])]).generate(MESSAGES)
    assert result.notes == {"a": ("draft-only: the server cannot score given text",)}
    assert result.summary()["notes"] == {"a": ["draft-only: the server cannot score given text"]}
    assert result.to_dict()["notes"]["a"] == ["draft-only: the server cannot score given text"]


def test_a_cut_that_re_encodes_longer_is_cut_again_to_fit_the_budget(monkeypatch):
    from scripted import ScriptedSession

    # A tokenizer where the cut text tokenizes one longer alone (as byte-level BPE can at a cut):
    # "word-word" is one token inside a text but two at its end.
    def count(self, text: str) -> int:
        return len(text.split()) + (1 if text.endswith("-word") else 0)

    monkeypatch.setattr(ScriptedSession, "count_tokens", count)
    member = ScriptedMember("m", drafts=[("one two three word-word four five", False)])
    result = Ensemble([member], FusionConfig(max_tokens=4, segment_tokens=10)).generate(
        [{"role": "user", "content": "q"}]
    )
    assert result.finish_reason == "length"
    assert result.output_tokens <= 4 and result.text == "one two three"
