"""The scoring math against hand-computed examples (algorithm.md §3, steps 4–6)."""

import math

import pytest

from specfuse_core import scoring


def test_candidate_score_modes_match_hand_computation():
    logprobs = [math.log(0.5), math.log(0.25)]
    logits = [2.0, -1.0]
    assert scoring.candidate_score(logprobs, logits, "mean_prob") == pytest.approx((0.5 + 0.25) / 2)
    assert scoring.candidate_score(logprobs, logits, "mean_logprob") == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)
    assert scoring.candidate_score(logprobs, logits, "mean_logit") == pytest.approx(0.5)


def test_candidate_score_needs_tokens():
    with pytest.raises(ValueError):
        scoring.candidate_score([], [], "mean_prob")


def test_sum_normalisation_divides_by_total():
    assert scoring.normalize_row([0.2, 0.6], "sum") == pytest.approx([0.25, 0.75])


def test_softmax_normalisation_with_temperature():
    out = scoring.normalize_row([1.0, 2.0], "softmax", temperature=0.5)
    e1, e2 = math.exp(2.0), math.exp(4.0)
    assert out == pytest.approx([e1 / (e1 + e2), e2 / (e1 + e2)])


def test_sum_on_log_domain_scores_equals_softmax_at_temperature_one():
    row = [-1.0, -3.0, -0.5]
    assert scoring.normalize_row(row, "sum", mode="mean_logprob") == pytest.approx(
        scoring.normalize_row(row, "softmax", mode="mean_logprob", temperature=1.0)
    )
    out = scoring.normalize_row(row, "sum", mode="mean_logprob")
    assert out[2] > out[0] > out[1]  # a higher (less negative) log-prob gets the larger share


def test_excluded_scores_take_no_share():
    matrix = scoring.exclude_self_scores([[0.4, 0.4, 0.2]], [[True, False, False]])
    assert matrix == [[None, 0.4, 0.2]]
    assert scoring.normalize_row(matrix[0], "sum") == pytest.approx([0.0, 2 / 3, 1 / 3])


def test_row_with_no_votes_is_all_zero():
    assert scoring.normalize_row([None, None], "sum") == [0.0, 0.0]


def test_aggregate_is_weighted_sum_of_normalised_rows():
    normalized = [[0.25, 0.75], [0.6, 0.4]]
    assert scoring.aggregate(normalized, [0.5, 0.5]) == pytest.approx([0.425, 0.575])
    assert scoring.aggregate(normalized, [0.8, 0.2]) == pytest.approx([0.32, 0.68])


def test_select_winner_argmax_then_self_score_then_member_order():
    assert scoring.select_winner([0.3, 0.7], [0.9, 0.1], [0, 1]) == 1
    assert scoring.select_winner([0.5, 0.5], [0.2, 0.4], [0, 1]) == 1  # tie: higher self-score
    assert scoring.select_winner([0.5, 0.5], [0.3, 0.3], [1, 0]) == 1  # full tie: earlier member


def test_full_round_by_hand():
    # Two scorers, two candidates. Scorer A: mean probs 0.6 / 0.2; scorer B: 0.3 / 0.3.
    raw = [[0.6, 0.2], [0.3, 0.3]]
    normalized = scoring.normalize_matrix(raw, "sum")
    assert normalized == [pytest.approx([0.75, 0.25]), pytest.approx([0.5, 0.5])]
    totals = scoring.aggregate(normalized, [0.5, 0.5])
    assert totals == pytest.approx([0.625, 0.375])
    assert scoring.select_winner(totals, [0.6, 0.3], [0, 1]) == 0
