"""The scoring math against hand-computed examples (docs/algorithm.md §3, steps 4–6)."""

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


# -- ratio, calibrated and rank normalisations ------------------------------------------------------


def test_ratio_divides_raw_scores_without_exponentiating():
    assert scoring.normalize_row([0.2, 0.6], "ratio") == pytest.approx([0.25, 0.75])
    # The reference code: mean logits 12 and 18 give 12/30 and 18/30 (sum would exponentiate first).
    assert scoring.normalize_row([12.0, 18.0], "ratio", mode="mean_logit") == pytest.approx([0.4, 0.6])
    assert scoring.normalize_row([12.0, 18.0], "sum", mode="mean_logit") != pytest.approx([0.4, 0.6])
    assert scoring.normalize_row([None, 3.0, 1.0], "ratio") == pytest.approx([0.0, 0.75, 0.25])
    assert scoring.normalize_row([0.0, 0.0], "ratio") == [0.5, 0.5]


def test_preference_spread_is_the_mean_pairwise_margin():
    assert scoring.preference_spread([0.6, 0.2]) == pytest.approx(0.4)
    assert scoring.preference_spread([0.1, 0.4, 0.7]) == pytest.approx((0.3 + 0.6 + 0.3) / 3)
    assert scoring.preference_spread([None, 0.5]) is None


def test_margin_scale_is_a_running_mean_of_spreads():
    scale = scoring.update_margin_scale(scoring.MarginScale(), [0.6, 0.2])
    assert (scale.total, scale.rounds, scale.value) == (pytest.approx(0.4), 1, pytest.approx(0.4))
    scale = scoring.update_margin_scale(scale, [0.3, 0.5])
    assert (scale.rounds, scale.value) == (2, pytest.approx(0.3))
    assert scoring.update_margin_scale(scale, [None, 0.9]) == scale  # one vote: no margin to learn from
    assert scoring.MarginScale().value == 0.0


def test_calibrated_vote_measures_the_margin_in_typical_margins():
    # Margin 0.4 with typical margin 0.4: one unit, a vote of e/(1+e) = 0.731 for the preferred draft.
    e = math.e
    assert scoring.calibrated_row([0.6, 0.2], 0.4) == pytest.approx([e / (1 + e), 1 / (1 + e)])
    # Margin 0.4 with typical margin 0.2: two units, e^2/(1+e^2) = 0.881.
    assert scoring.normalize_row([0.6, 0.2], "calibrated", typical_margin=0.2) == pytest.approx(
        [e**2 / (1 + e**2), 1 / (1 + e**2)]
    )
    assert scoring.calibrated_row([0.6, 0.2], 0.0) == [0.5, 0.5]  # nothing learnt yet
    assert scoring.calibrated_row([None, 0.6, 0.2], 0.4) == pytest.approx([0.0, e / (1 + e), 1 / (1 + e)])
    with pytest.raises(ValueError):
        scoring.normalize_row([0.6, 0.2], "calibrated")


def test_calibrated_votes_are_equally_loud_where_sum_lets_the_sharp_scorer_win():
    # Sharp scorer Q prefers its own draft (column 0) by 0.14, its typical margin; flat scorer S prefers
    # its own draft (column 1) by 0.054, twice its typical margin of 0.027.
    q_row, s_row = [0.77, 0.63], [0.600, 0.654]
    by_sum = scoring.aggregate(scoring.normalize_matrix([q_row, s_row], "sum"), [0.5, 0.5])
    assert by_sum == pytest.approx([(0.77 / 1.40 + 0.600 / 1.254) / 2, (0.63 / 1.40 + 0.654 / 1.254) / 2])
    assert by_sum[0] > by_sum[1]  # sum: the sharp scorer decides
    calibrated = scoring.normalize_matrix([q_row, s_row], "calibrated", typical_margins=[0.14, 0.027])
    s1, s2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))
    assert calibrated == [pytest.approx([s1, 1 - s1]), pytest.approx([1 - s2, s2])]
    totals = scoring.aggregate(calibrated, [0.5, 0.5])
    assert totals == pytest.approx([(s1 + 1 - s2) / 2, (1 - s1 + s2) / 2])  # 0.425 / 0.575
    assert totals[1] > totals[0]  # the flat scorer's stronger (relative) preference wins
    # Each at exactly its typical margin: a tie, whatever the raw sharpness.
    even = scoring.normalize_matrix([[0.77, 0.63], [0.645, 0.672]], "calibrated", typical_margins=[0.14, 0.027])
    assert scoring.aggregate(even, [0.5, 0.5]) == pytest.approx([0.5, 0.5])


def test_rank_is_borda_with_shared_ties():
    assert scoring.normalize_row([0.2, 0.5, 0.9], "rank") == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert scoring.rank_row([0.5, 0.5, 0.1]) == pytest.approx([0.5, 0.5, 0.0])
    assert scoring.rank_row([0.3, 0.3]) == [0.5, 0.5]
    assert scoring.rank_row([None, 0.3, 0.4]) == pytest.approx([0.0, 0.0, 1.0])
    assert scoring.rank_row([None, 0.3]) == [0.0, 1.0]
    # Three scorers, three candidates: a 2-of-3 majority for candidate 0 wins.
    ranks = scoring.normalize_matrix([[0.9, 0.5, 0.1], [0.8, 0.1, 0.5], [0.2, 0.9, 0.3]], "rank")
    assert scoring.aggregate(ranks, [1 / 3] * 3) == pytest.approx([(2 + 2 + 0) / 9, (1 + 0 + 2) / 9, (0 + 1 + 1) / 9])


def test_leading_span_scores_every_candidate_over_the_shortest_length():
    assert scoring.leading_span([3, 5, 2]) == 2
    logprobs = [math.log(0.8), math.log(0.6), math.log(0.1)]
    logits = [3.0, 2.0, 1.0]
    assert scoring.candidate_score(logprobs, logits, "mean_prob", 2) == pytest.approx(0.7)
    assert scoring.candidate_score(logprobs, logits, "mean_logit", 1) == pytest.approx(3.0)
    assert scoring.candidate_score(logprobs, logits, "mean_prob") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        scoring.leading_span([])


def test_select_winner_tie_goes_to_the_longer_candidate_within_tolerance():
    totals = [0.5, 0.5 + 1e-9]
    assert scoring.select_winner(totals, [0.9, 0.1], [0, 1]) == 1  # plain argmax
    assert scoring.select_winner(totals, [0.9, 0.1], [0, 1], lengths=[40, 2], tolerance=1e-6) == 0
    assert scoring.select_winner(totals, [0.9, 0.1], [0, 1], lengths=[2, 40], tolerance=1e-6) == 1
    assert scoring.select_winner([0.6, 0.4], [0.1, 0.9], [0, 1], lengths=[2, 40], tolerance=1e-6) == 0


def test_select_winner_picks_among_eligible_candidates_only():
    totals, self_scores, order = [0.7, 0.2, 0.1], [0.5, 0.5, 0.5], [0, 1, 2]
    assert scoring.select_winner(totals, self_scores, order) == 0
    assert scoring.select_winner(totals, self_scores, order, eligible=[False, True, True]) == 1
    with pytest.raises(ValueError):
        scoring.select_winner(totals, self_scores, order, eligible=[False, False, False])
