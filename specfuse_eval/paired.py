"""Paired statistics for the evaluation harnesses: does a configuration beat the best member alone?

Every configuration answers the same prompts, so the comparison is paired:

- prompt level: each prompt is a win (the configuration follows it, the member does not), a loss (the
  reverse) or a tie. McNemar's exact test asks whether wins and losses are equally likely:
  ``p = min(1, 2 · Σ_{k ≤ min(W, L)} C(W + L, k) / 2^(W + L))`` (two-sided, ties ignored);
- instruction level: the difference of instruction-level accuracies ``Σ f_c / Σ n − Σ f_m / Σ n``
  (``f``: instructions followed in a prompt, ``n``: instructions in it), with a 95% interval from a
  paired bootstrap over prompts (the instructions of one prompt are resampled together, because they
  share one answer).

Pure standard library, so that the statistics are unit-tested with hand-checkable numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05
RESAMPLES = 10_000
MIN_BOOTSTRAP_PROMPTS = 10
"""Below this many prompts a bootstrap interval is too coarse to call anything significant (with one
prompt it collapses to a point); the instruction-level verdict then says so instead."""


def wins_losses(pairs: Iterable[tuple[bool, bool]]) -> tuple[int, int]:
    """Over ``(a correct, b correct)`` pairs: how many only ``a`` got right, and how many only ``b``."""
    wins = losses = 0
    for a, b in pairs:
        wins += bool(a and not b)
        losses += bool(b and not a)
    return wins, losses


def mcnemar_exact_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: ``min(1, 2 · P(X ≤ min(W, L)))`` with ``X ~ Binomial(W + L, ½)``."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values, by linear interpolation between closest ranks."""
    if not sorted_values:
        raise ValueError("no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def instruction_accuracy(followed: Sequence[int], totals: Sequence[int]) -> float:
    """``Σ f / Σ n``: instructions followed over instructions given."""
    given = sum(totals)
    return sum(followed) / given if given else 0.0


def bootstrap_interval(
    statistic: Any, n_items: int, *, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` resamples of ``range(n_items)``
    with replacement (seeded: the same data always gives the same interval)."""
    if n_items == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(n_items) for _ in range(n_items)]) for _ in range(resamples))
    tail = (1 - level) / 2
    return (percentile(values, tail), percentile(values, 1 - tail))


def instruction_difference_interval(
    config_followed: Sequence[int],
    member_followed: Sequence[int],
    totals: Sequence[int],
    *,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap interval of the instruction-level accuracy difference, resampling prompts."""

    def difference(indices: Sequence[int]) -> float:
        given = sum(totals[i] for i in indices)
        if not given:
            return 0.0
        return (sum(config_followed[i] for i in indices) - sum(member_followed[i] for i in indices)) / given

    return bootstrap_interval(difference, len(totals), resamples=resamples, level=level, seed=seed)


def instruction_accuracy_interval(
    followed: Sequence[int], totals: Sequence[int], *, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of one configuration's instruction-level accuracy, resampling prompts."""

    def accuracy(indices: Sequence[int]) -> float:
        return instruction_accuracy([followed[i] for i in indices], [totals[i] for i in indices])

    return bootstrap_interval(accuracy, len(totals), resamples=resamples, level=level, seed=seed)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (prompt-level accuracy): centre
    ``(k + z²/2) / (n + z²)``, half-width ``z · sqrt(k (n − k) / n + z²/4) / (n + z²)``."""
    if n == 0:
        return (0.0, 1.0)
    centre = (successes + z * z / 2) / (n + z * z)
    half = z * math.sqrt(successes * (n - successes) / n + z * z / 4) / (n + z * z)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class PairedComparison:
    """A configuration against a reference (the best member) on the same prompts."""

    config: str
    reference: str
    n: int
    wins: int
    losses: int
    both: int
    neither: int
    mcnemar_p: float
    prompt_difference: float
    instruction_difference: float
    instruction_ci: tuple[float, float]

    @property
    def prompt_significant(self) -> bool:
        return self.mcnemar_p < ALPHA

    @property
    def instruction_significant(self) -> bool:
        low, high = self.instruction_ci
        return self.n >= MIN_BOOTSTRAP_PROMPTS and (low > 0 or high < 0)

    def sentence(self) -> str:
        """The comparison in words, saying whether each difference is significant at the 5% level."""

        def verdict(significant: bool, difference: float) -> str:
            if not significant:
                return "not significant"
            return "significant gain" if difference > 0 else "significant loss"

        low, high = self.instruction_ci
        instruction_verdict = verdict(self.instruction_significant, self.instruction_difference)
        if self.n < MIN_BOOTSTRAP_PROMPTS:
            instruction_verdict = f"too few prompts to tell: N < {MIN_BOOTSTRAP_PROMPTS}"
        return (
            f"{self.config} vs {self.reference} on N = {self.n} prompts: {self.wins} wins, {self.losses} losses "
            f"(prompt level {100 * self.prompt_difference:+.1f} points, McNemar exact p = {self.mcnemar_p:.3g}: "
            f"{verdict(self.prompt_significant, self.prompt_difference)}); instruction level "
            f"{100 * self.instruction_difference:+.1f} points, 95% CI [{100 * low:+.1f}, {100 * high:+.1f}] "
            f"({instruction_verdict})."
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(prompt_significant=self.prompt_significant, instruction_significant=self.instruction_significant,
                   sentence=self.sentence())  # fmt: skip
        return out


def compare(
    config: str,
    reference: str,
    config_prompts: Sequence[bool],
    reference_prompts: Sequence[bool],
    config_followed: Sequence[int],
    reference_followed: Sequence[int],
    totals: Sequence[int],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Pair two configurations prompt by prompt (the sequences are aligned by prompt)."""
    n = len(totals)
    if not (len(config_prompts) == len(reference_prompts) == len(config_followed) == len(reference_followed) == n):
        raise ValueError("paired sequences must have one entry per prompt")
    wins, losses = wins_losses(zip(config_prompts, reference_prompts))
    both = sum(1 for a, b in zip(config_prompts, reference_prompts) if a and b)
    given = sum(totals)
    return PairedComparison(
        config=config,
        reference=reference,
        n=n,
        wins=wins,
        losses=losses,
        both=both,
        neither=n - wins - losses - both,
        mcnemar_p=mcnemar_exact_p(wins, losses),
        prompt_difference=(wins - losses) / n if n else 0.0,
        instruction_difference=(sum(config_followed) - sum(reference_followed)) / given if given else 0.0,
        instruction_ci=instruction_difference_interval(
            config_followed, reference_followed, totals, resamples=resamples, seed=seed
        ),
    )


def best_reference(candidates: Sequence[str], prompt_acc: dict[str, float], instruction_acc: dict[str, float]) -> str:
    """The best single member: highest prompt-level accuracy, then instruction-level, then first listed."""
    return max(candidates, key=lambda c: (prompt_acc[c], instruction_acc[c], -candidates.index(c)))
