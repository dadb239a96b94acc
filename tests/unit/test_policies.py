"""Model exit and Hedge weights against hand-computed examples (docs/algorithm.md §4–5)."""

import math

import pytest

from specfuse_core import policies


def test_no_exit_before_min_rounds():
    decision = policies.decide_exits([5.0, 0.0], 2, min_rounds=3, temperature=1.0, entropy_threshold=0.6, share=0.5)
    assert decision.exiting == []


def test_clear_loser_exits_after_min_rounds():
    decision = policies.decide_exits([5.0, 0.0], 3, min_rounds=3, temperature=1.0, entropy_threshold=0.6, share=0.5)
    p_loser = 1 / (1 + math.exp(5.0))
    assert decision.p[1] == pytest.approx(p_loser)
    h = -(p_loser * math.log(p_loser) + (1 - p_loser) * math.log(1 - p_loser)) / math.log(2)
    assert decision.entropy == pytest.approx(h)
    assert decision.exiting == [1]


def test_balanced_members_stay():
    decision = policies.decide_exits([2.0, 1.9], 10, min_rounds=3, temperature=1.0, entropy_threshold=0.6, share=0.5)
    assert decision.entropy > 0.6 and decision.exiting == []


def test_leader_never_exits_even_with_extreme_settings():
    decision = policies.decide_exits([1.0, 1.0], 10, min_rounds=1, temperature=1.0, entropy_threshold=1.0, share=1.0)
    assert 0 not in decision.exiting  # on a tie the earlier member leads


def test_round_quality_credits_the_winner_or_every_aggregated_score():
    assert policies.round_quality([0.49, 0.51], 1, "wins") == [0.0, 1.0]
    assert policies.round_quality([0.2, 0.5, 0.3], 0, "wins") == [1.0, 0.0, 0.0]
    assert policies.round_quality([0.49, 0.51], 1, "scores") == [0.49, 0.51]


def test_hedge_rewards_by_hand():
    # Scorers/members 0,1,2; member i proposed candidate i.
    raw = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.6, 0.6, 0.3]]
    rewards = policies.hedge_rewards(raw, [[0], [1], [2]])
    # member 0: scorer 1 ranks cand0 (0.2) vs cand1 (0.8) no, vs cand2 (0.4) no; scorer 2: 0.6>=0.6 yes, 0.6>=0.3 yes
    assert rewards[0] == pytest.approx(2 / 4)
    # member 1: scorer 0: 0.1>=0.9 no, 0.1>=0.5 no; scorer 2: 0.6>=0.6 yes, 0.6>=0.3 yes
    assert rewards[1] == pytest.approx(2 / 4)
    # member 2: scorer 0: 0.5>=0.9 no, 0.5>=0.1 yes; scorer 1: 0.4>=0.2 yes, 0.4>=0.8 no
    assert rewards[2] == pytest.approx(2 / 4)


def test_hedge_update_and_schedules():
    eta = policies.hedge_learning_rate(1.0, 4, 2, "1/t")
    assert eta == pytest.approx(1.0 / 2 / 2)
    assert policies.hedge_learning_rate(1.0, 4, 4, "1/sqrt(t)") == pytest.approx(1.0 / 2 / 2)
    w = policies.hedge_update([0.5, 0.5], [1.0, 0.0], 0.25)
    assert w[0] == pytest.approx(math.exp(0.25) / (math.exp(0.25) + 1))
    assert sum(w) == pytest.approx(1.0)


# -- exit on a lead significant for the number of rounds -------------------------------------------


def test_lead_exit_needs_z_sqrt_rounds():
    # z = 1.645: after 3 rounds the lead must reach 1.645 * sqrt(3) = 2.85, so 3-0 exits and 2-1 does not.
    assert policies.decide_exits_by_lead([3.0, 0.0], 3, min_rounds=3, z=1.645).exiting == [1]
    assert policies.decide_exits_by_lead([2.0, 1.0], 3, min_rounds=3, z=1.645).exiting == []
    # After 16 rounds the bar is 1.645 * 4 = 6.58: 11-5 (lead 6) stays, 12-4 (lead 8) exits.
    assert policies.decide_exits_by_lead([11.0, 5.0], 16, min_rounds=3, z=1.645).exiting == []
    assert policies.decide_exits_by_lead([4.0, 12.0], 16, min_rounds=3, z=1.645).exiting == [0]
    # z = 1: after 4 rounds a lead of 2 (3-1) is enough.
    assert policies.decide_exits_by_lead([3.0, 1.0], 4, min_rounds=3, z=1.0).exiting == [1]


def test_lead_exit_waits_for_min_rounds_and_spares_the_leader():
    assert policies.decide_exits_by_lead([2.0, 0.0], 2, min_rounds=3, z=0.1).exiting == []
    assert policies.decide_exits_by_lead([5.0, 5.0], 10, min_rounds=1, z=1e-9).exiting == []  # a tie: no lead
    assert policies.decide_exits_by_lead([0.0, 9.0], 9, min_rounds=1, z=0.5).exiting == [0]  # never the leader
    three = policies.decide_exits_by_lead([6.0, 1.0, 4.0], 7, min_rounds=3, z=1.645)  # bar 4.35
    assert three.exiting == [1]
    assert three.p == pytest.approx(policies.softmax([6.0, 1.0, 4.0]))
    assert policies.decide_exits_by_lead([4.0], 9, min_rounds=1, z=1.0).exiting == []


def test_exit_evidence_adds_requests_and_keeps_exits():
    from specfuse_core.policies import ExitEvidence

    evidence = ExitEvidence().add({"a": 3.0, "b": 1.0}, 4).add({"a": 1.0, "c": 2.0}, 3)
    assert (dict(evidence.quality), evidence.rounds) == ({"a": 4.0, "b": 1.0, "c": 2.0}, 7)
    kept = evidence.with_exit("b", "lost")
    assert kept.exited == {"b": "lost"} and evidence.exited == {} and kept.add({}, 1).exited == {"b": "lost"}
