"""Fair votes in the round loop, with scripted members: calibrated/rank/ratio votes and their state,
trimming only drafts that ended inside a word, leading-token scoring, and exit on a significant lead."""

import math
import random

import pytest

from scripted import ScriptedMember, ScriptedSession
from specfuse_core import Ensemble, FusionConfig, scoring
from specfuse_core.errors import ConfigError
from specfuse_core.member import TokenScores

MESSAGES = [{"role": "user", "content": "hi"}]


def own_fan(name: str, own: float, other: float):
    """A scorer that gives its own draft (which contains ``name``) ``own`` and anything else ``other``."""
    return lambda accepted, text, ends: own if name in text else other


def sharp_and_flat() -> list[ScriptedMember]:
    sharp = ScriptedMember("sharp", [("sharp w", False)] * 3 + [("end", True)], prob=own_fan("sharp", 0.77, 0.63))
    flat = ScriptedMember("flat", [("flat w", False)] * 3 + [("end", True)], prob=own_fan("flat", 0.672, 0.645))
    return [sharp, flat]


def test_sum_lets_the_sharp_scorer_win_every_round_and_calibrated_makes_it_a_tie():
    by_sum = Ensemble(sharp_and_flat(), FusionConfig(temperature=0)).generate(MESSAGES)
    assert [e.winners for e in by_sum.trace[:3]] == [("sharp",)] * 3
    assert by_sum.trace[0].totals[0] > 0.5 + 0.01
    calibrated = Ensemble(sharp_and_flat(), FusionConfig(temperature=0, normalize="calibrated")).generate(MESSAGES)
    # Every round each scorer prefers its own draft by exactly its typical margin: both votes are
    # e/(1+e) for their own draft, so the totals tie at 0.5 (the tie-break then decides).
    for event in calibrated.trace[:3]:
        assert event.totals == pytest.approx((0.5, 0.5))


def test_calibrated_ties_go_to_a_fair_coin_not_to_the_more_self_confident_member():
    # Each round ties (above). The self-score tie-break hands every tie to the sharp member, the bias
    # calibrated exists to remove; the default for calibrated (and rank) is a coin seeded by the texts.
    def members() -> list[ScriptedMember]:  # sharp_and_flat, with drafts on which the coin picks flat
        sharp = ScriptedMember("sharp", [("sharp y", False)] * 3 + [("end", True)], prob=own_fan("sharp", 0.77, 0.63))
        flat = ScriptedMember("flat", [("flat y", False)] * 3 + [("end", True)], prob=own_fan("flat", 0.672, 0.645))
        return [sharp, flat]

    assert scoring.coin_key("flat y") < scoring.coin_key("sharp y")
    by_self = Ensemble(members(), FusionConfig(temperature=0, normalize="calibrated", tie_break="self_score"))
    assert [e.winners for e in by_self.generate(MESSAGES).trace[:3]] == [("sharp",)] * 3
    by_coin = Ensemble(members(), FusionConfig(temperature=0, normalize="calibrated")).generate(MESSAGES)
    assert [e.totals for e in by_coin.trace[:3]] == [pytest.approx((0.5, 0.5))] * 3
    assert [e.winners for e in by_coin.trace[:3]] == [("flat",)] * 3
    assert FusionConfig(normalize="calibrated").effective_tie_break == "coin"
    assert FusionConfig(normalize="rank").effective_tie_break == "coin"
    assert FusionConfig().effective_tie_break == "self_score"
    assert FusionConfig(tie_break="coin").effective_tie_break == "coin"
    with pytest.raises(ConfigError, match="tie_break must be one of self_score, coin"):
        FusionConfig(tie_break="random")


def test_coin_favours_no_position_and_only_breaks_ties():
    rng = random.Random(7)
    texts = ["".join(rng.choice("abcdefgh ") for _ in range(12)) for _ in range(2000)]
    first_wins = sum(
        scoring.select_winner([0.5, 0.5], [0.9, 0.1], [0, 1], coin=[scoring.coin_key(a), scoring.coin_key(b)]) == 0
        for a, b in zip(texts[::2], texts[1::2])
    )
    assert 450 <= first_wins <= 550  # 1000 fair flips: 4.7 standard deviations either side
    keys = [scoring.coin_key("x"), scoring.coin_key("y")]
    assert scoring.select_winner([0.4, 0.6], [0.9, 0.1], [0, 1], coin=keys) == 1  # no tie: the argmax
    low = min((0, 1), key=lambda i: keys[i])
    assert scoring.select_winner([0.5, 0.5], [0.9, 0.1], [0, 1], coin=keys) == low
    # score_span="leading": the longer candidate first, then the coin
    assert scoring.select_winner([0.5, 0.5], [0.9, 0.1], [0, 1], lengths=[3, 9], coin=keys) == 1
    assert scoring.select_winner([0.5, 0.5], [0.9, 0.1], [0, 1], lengths=[9, 3], coin=keys) == 0


def test_calibrated_state_is_kept_per_request_and_across_requests_with_keep_weights():
    ens = Ensemble(sharp_and_flat(), FusionConfig(temperature=0, normalize="calibrated"))
    ens.generate(MESSAGES)
    assert ens.margin_scales == {}  # per request only
    keep = Ensemble(sharp_and_flat(), FusionConfig(temperature=0, normalize="calibrated", keep_weights=True))
    keep.generate(MESSAGES)
    assert keep.margin_scales["sharp"].rounds == 3
    assert keep.margin_scales["sharp"].value == pytest.approx(0.14)
    assert keep.margin_scales["flat"].value == pytest.approx(0.027)
    keep.generate(MESSAGES)
    assert keep.margin_scales["sharp"].rounds == 6


def test_calibrated_round_where_the_flat_scorer_cares_more():
    # Rounds 1-2: flat prefers its draft by 0.027; round 3 by 0.081 (3x): its typical margin becomes
    # (0.027 + 0.027 + 0.081) / 3 = 0.045 and this round's margin is 1.8 of it, against sharp's 1.0.
    def flat_prob(accepted, text, ends):
        late = accepted.count("w") >= 2
        return (0.726 if late else 0.672) if "flat" in text else 0.645

    sharp = ScriptedMember("sharp", [("sharp w", False)] * 3 + [("end", True)], prob=own_fan("sharp", 0.77, 0.63))
    flat = ScriptedMember("flat", [("flat w", False)] * 3 + [("end", True)], prob=flat_prob)
    result = Ensemble([sharp, flat], FusionConfig(temperature=0, normalize="calibrated")).generate(MESSAGES)
    third = result.trace[2]
    s_sharp, s_flat = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-0.081 / 0.045))
    assert third.totals == pytest.approx(((s_sharp + 1 - s_flat) / 2, (1 - s_sharp + s_flat) / 2))
    assert third.winners == ("flat",)


def test_ratio_and_rank_reach_the_engine():
    a = ScriptedMember("a", [("alpha", True)], prob=own_fan("alpha", 0.6, 0.2))
    b = ScriptedMember("b", [("beta", True)], prob=own_fan("alpha", 0.3, 0.3))
    ratio = Ensemble([a, b], FusionConfig(normalize="ratio", score_mode="mean_logit")).generate(MESSAGES)
    # mean logits are 10 p: a gives 6 / 2, b gives 3 / 3.
    assert ratio.trace[0].totals == pytest.approx((0.5 * 6 / 8 + 0.5 * 0.5, 0.5 * 2 / 8 + 0.5 * 0.5))
    rank = Ensemble([a, b], FusionConfig(normalize="rank")).generate(MESSAGES)
    assert rank.trace[0].totals == pytest.approx((0.75, 0.25))


def test_finished_sentence_that_hit_the_budget_is_not_trimmed():
    # Four-word budget: "The capital is Paris." hits it; it ends with punctuation, so it stays whole.
    a = ScriptedMember("a", [("The capital is Paris.", False), ("end", True)], prob=own_fan("Paris", 0.9, 0.1))
    b = ScriptedMember("b", [("Paris is the capital", False), ("end", True)], prob=own_fan("Paris", 0.9, 0.1))
    result = Ensemble([a, b], FusionConfig(temperature=0, segment_tokens=4)).generate(MESSAGES)
    texts = [c.text for c in result.trace[0].candidates]
    assert texts == ["The capital is Paris.", "Paris is the"]  # b ended on a letter, next token unknown


class LeadingSession(ScriptedSession):
    """Per-token scores: the first token of every candidate gets 0.68, later tokens 0.3."""

    async def score(self, candidates):
        self.score_calls += 1
        self.usage.calls += 1
        out = []
        for text, ends in candidates:
            n = max(1, len(text.split()) + int(ends))
            probs = [0.68] + [0.3] * (n - 1)
            out.append(TokenScores([math.log(p) for p in probs], [10 * p for p in probs]))
        return out


class LeadingMember(ScriptedMember):
    async def open_session(self, messages, *, cache=True, seed=None, **options):
        session = LeadingSession(self)
        self.sessions.append(session)
        return session


def test_leading_span_removes_the_short_candidate_advantage():
    def make():
        return [LeadingMember("short", [("1.", False), ("end", True)]),
                LeadingMember("long", [("1. Keep a schedule", False), ("end", True)])]  # fmt: skip

    full = Ensemble(make(), FusionConfig(temperature=0)).generate(MESSAGES)
    assert full.trace[0].winners == ("short",)  # mean 0.68 beats (0.68 + 3 * 0.3) / 4
    leading = Ensemble(make(), FusionConfig(temperature=0, score_span="leading")).generate(MESSAGES)
    assert leading.trace[0].totals == pytest.approx((0.5, 0.5))
    assert leading.trace[0].winners == ("long",)  # a tie over one leading token: the longer wins


def test_lead_exit_spares_a_close_race_and_drops_a_clear_loser():
    config = FusionConfig(temperature=0, exit=True, exit_rule="lead", max_tokens=200)
    good = ScriptedMember("good", [("good w", False)] * 12 + [("end", True)], prob=own_fan("good", 0.9, 0.1))
    bad = ScriptedMember("bad", [("bad w", False)], prob=own_fan("good", 0.9, 0.1))
    result = Ensemble([good, bad], config).generate(MESSAGES)
    assert [(x.member, x.round) for x in result.exits] == [("bad", 3)]  # 3-0 >= 1.645 sqrt(3)
    assert result.exits[0].reason.startswith("significant lead")

    def alternating(accepted, text, ends):  # a and b take turns winning
        turn = accepted.count("w") % 2
        return 0.9 if (("a" in text) == (turn == 0)) else 0.1

    a = ScriptedMember("a", [("a w", False)] * 12 + [("end", True)], prob=alternating)
    b = ScriptedMember("b", [("b w", False)] * 12 + [("end", True)], prob=alternating)
    close = Ensemble([a, b], config).generate(MESSAGES)
    assert close.exits == () and not any(e.solo for e in close.trace)


def keep_exits_pair() -> list[ScriptedMember]:
    good = ScriptedMember("good", [("good w", False)] * 2 + [("good end", True)], prob=own_fan("good", 0.9, 0.1))
    bad = ScriptedMember("bad", [("bad w", False)], prob=own_fan("good", 0.9, 0.1))
    return [good, bad]


def test_keep_exits_adds_up_the_lead_across_requests_and_keeps_the_loser_out_until_readmit():
    config = FusionConfig(temperature=0, exit=True, exit_rule="lead", exit_lead_z=2.0, keep_exits=True)
    good, bad = keep_exits_pair()
    ensemble = Ensemble([good, bad], config)
    first = ensemble.generate(MESSAGES)
    assert first.exits == ()  # 3-0 after 3 rounds < 2 sqrt(3)
    assert (dict(ensemble.exit_evidence.quality), ensemble.exit_evidence.rounds) == ({"good": 3.0, "bad": 0.0}, 3)

    second = ensemble.generate(MESSAGES)
    assert [(x.member, x.round) for x in second.exits] == [("bad", 1)]  # 4-0 after 4 rounds >= 2 sqrt(4)
    assert ensemble.exit_evidence.exited == {"bad": second.exits[0].reason}

    third = ensemble.generate(MESSAGES)
    assert [(x.member, x.round) for x in third.exits] == [("bad", 0)]
    assert third.exits[0].reason.startswith("exited in an earlier request (keep_exits): significant lead")
    assert len(bad.sessions) == 2 and third.text == "good wgood wgood end"  # never opened for the third
    assert all(e.solo for e in third.trace)

    ensemble.readmit()
    fourth = ensemble.generate(MESSAGES)
    assert fourth.exits == () and len(bad.sessions) == 3
    assert ensemble.exit_evidence.rounds == 3


def test_without_keep_exits_every_request_starts_from_zero():
    config = FusionConfig(temperature=0, exit=True, exit_rule="lead", exit_lead_z=2.0)
    ensemble = Ensemble(keep_exits_pair(), config)
    assert [ensemble.generate(MESSAGES).exits for _ in range(3)] == [(), (), ()]
    assert ensemble.exit_evidence.rounds == 0


def test_keep_exits_never_keeps_out_the_last_drafter_and_needs_the_lead_rule():
    good, bad = keep_exits_pair()
    ensemble = Ensemble([good, bad], FusionConfig(exit=True, exit_rule="lead", keep_exits=True))
    ensemble._keep_out("bad", "lost")
    ensemble._keep_out("good", "lost in a concurrent request")  # would leave nobody to draft
    assert ensemble.exit_evidence.exited == {"bad": "lost"}
    with pytest.raises(ConfigError, match="keep_exits needs exit_rule='lead'"):
        FusionConfig(exit=True, keep_exits=True)
