"""The quality benchmark's paired statistics against hand-computed numbers."""

import pytest

from specfuse_eval import paired


@pytest.mark.parametrize(
    ("wins", "losses", "p"),
    [
        (0, 0, 1.0),
        (5, 0, 2 / 32),  # all five discordant prompts one way: 2 · (1/2)^5
        (0, 5, 2 / 32),
        (6, 1, 2 * (1 + 7) / 128),  # 2 · (C(7,0) + C(7,1)) / 2^7 = 0.125
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (10, 0, 2 / 1024),
        (3, 3, 1.0),  # capped at 1
    ],
)
def test_mcnemar_exact_p(wins, losses, p):
    assert paired.mcnemar_exact_p(wins, losses) == pytest.approx(p)


def test_percentile_interpolates_between_ranks():
    assert paired.percentile([0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert paired.percentile([0.0, 1.0, 2.0, 3.0], 0.0) == 0.0
    assert paired.percentile([0.0, 1.0, 2.0, 3.0], 1.0) == 3.0
    assert paired.percentile([0.0, 10.0], 0.25) == pytest.approx(2.5)


def test_wilson_interval():
    low, high = paired.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # the textbook 0/10 upper bound
    low, high = paired.wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_bootstrap_difference_two_prompts_matches_the_exact_distribution():
    # Prompt A: the configuration follows its one instruction, the member does not (+1); prompt B: both
    # miss it (0). Resampling two prompts gives AA (+1), AB or BA (+1/2), BB (0) with probability
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1.
    low, high = paired.instruction_difference_interval([1, 0], [0, 0], [1, 1])
    assert (low, high) == (0.0, 1.0)


def test_bootstrap_interval_is_degenerate_when_every_prompt_agrees():
    # Every prompt: the configuration follows one instruction in two more than the member (+1/2), so
    # every resample has difference 1/2.
    low, high = paired.instruction_difference_interval([2, 1, 2], [1, 0, 1], [2, 2, 2], resamples=500)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    config = [1, 0, 2, 1, 3, 0, 1, 2]
    member = [0, 0, 1, 1, 1, 1, 0, 2]
    totals = [1, 1, 2, 2, 3, 1, 1, 2]
    first = paired.instruction_difference_interval(config, member, totals, resamples=2000, seed=7)
    assert first == paired.instruction_difference_interval(config, member, totals, resamples=2000, seed=7)
    estimate = (sum(config) - sum(member)) / sum(totals)
    assert first[0] < estimate < first[1]
    low, high = paired.instruction_accuracy_interval(config, totals, resamples=2000)
    assert low < sum(config) / sum(totals) < high


def test_compare_counts_and_words():
    result = paired.compare(
        "specfuse", "smollm",
        config_prompts=[True, True, False, False, True],
        reference_prompts=[False, True, True, False, False],
        config_followed=[1, 2, 0, 1, 1],
        reference_followed=[0, 2, 1, 1, 0],
        totals=[1, 2, 1, 2, 1],
        resamples=1000,
    )  # fmt: skip
    assert (result.wins, result.losses, result.both, result.neither) == (2, 1, 1, 1)
    assert result.mcnemar_p == pytest.approx(1.0)  # 2 · (1 + 3) / 8 capped
    assert result.prompt_difference == pytest.approx(1 / 5)
    assert result.instruction_difference == pytest.approx((5 - 4) / 7)
    assert not result.prompt_significant
    sentence = result.sentence()
    assert "2 wins, 1 losses" in sentence and "p = 1" in sentence and "not significant" in sentence
    sweep = paired.compare("x", "m", [True] * 10, [False] * 10, [1] * 10, [0] * 10, [1] * 10, resamples=200)
    assert sweep.mcnemar_p == pytest.approx(2 / 1024) and sweep.prompt_significant
    assert sweep.instruction_ci == (1.0, 1.0) and sweep.instruction_significant
    assert "significant gain" in sweep.sentence() and "too few" not in sweep.sentence()
    # Six prompts: McNemar is exact at any N (2/64 < 0.05), but six prompts are too few for the bootstrap.
    small = paired.compare("x", "m", [True] * 6, [False] * 6, [1] * 6, [0] * 6, [1] * 6, resamples=200)
    assert small.mcnemar_p == pytest.approx(2 / 64) and small.prompt_significant
    assert small.instruction_ci == (1.0, 1.0) and not small.instruction_significant
    assert "too few prompts to tell: N < 10" in small.sentence()
    with pytest.raises(ValueError):
        paired.compare("x", "m", [True], [True, False], [1], [1], [1])


def test_best_reference_by_prompt_then_instruction_accuracy():
    members = ["a", "b", "c"]
    assert paired.best_reference(members, {"a": 0.2, "b": 0.3, "c": 0.3}, {"a": 0.5, "b": 0.4, "c": 0.45}) == "c"
    assert paired.best_reference(members, {"a": 0.3, "b": 0.3, "c": 0.3}, {"a": 0.4, "b": 0.4, "c": 0.4}) == "a"
