"""Per-request policies over members: model exit (docs/algorithm.md §4) and online weights (§5)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def softmax(values: Sequence[float], temperature: float = 1.0) -> list[float]:
    top = max(v / temperature for v in values)
    exps = [math.exp(v / temperature - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def normalized_entropy(p: Sequence[float]) -> float:
    """``H = -Σ p log p / log(n)``; 1 for a uniform distribution, 0 for a point mass."""
    if len(p) < 2:
        return 0.0
    return -sum(x * math.log(x) for x in p if x > 0) / math.log(len(p))


def round_quality(totals: Sequence[float], winner: int, kind: str) -> list[float]:
    """What one verified round adds to each candidate's drafters' ``Q``: 1 to the winner and 0 to
    the rest (``"wins"``), or each candidate's aggregated score (``"scores"``)."""
    if kind == "scores":
        return list(totals)
    return [1.0 if i == winner else 0.0 for i in range(len(totals))]


@dataclass(frozen=True)
class ExitDecision:
    """Who exits after a round, with the numbers that decided it."""

    exiting: list[int]
    p: list[float]
    entropy: float


def decide_exits(
    cumulative_quality: Sequence[float],
    rounds_done: int,
    *,
    min_rounds: int,
    temperature: float,
    entropy_threshold: float,
    share: float,
) -> ExitDecision:
    """Model exit: ``p = softmax(Q / T)``, ``H = normalised entropy(p)``. If at least ``min_rounds``
    rounds are done and ``H < entropy_threshold``, every member with ``p_i < share / n`` exits, except
    the leader (the argmax of ``Q``), who never exits.

    ``cumulative_quality`` holds ``Q_i`` for the active members, in member order.
    """
    n = len(cumulative_quality)
    if n < 2:
        return ExitDecision([], [1.0] * n, 0.0)
    p = softmax(cumulative_quality, temperature)
    entropy = normalized_entropy(p)
    if rounds_done < min_rounds or entropy >= entropy_threshold:
        return ExitDecision([], p, entropy)
    leader = max(range(n), key=lambda i: (cumulative_quality[i], -i))
    exiting = [i for i in range(n) if i != leader and p[i] < share / n]
    return ExitDecision(exiting, p, entropy)


def decide_exits_by_lead(
    cumulative_quality: Sequence[float], rounds_done: int, *, min_rounds: int, z: float
) -> ExitDecision:
    """Model exit on a significant lead: after ``t = rounds_done ≥ min_rounds`` verified rounds, member
    i exits when ``Q_leader − Q_i ≥ z · sqrt(t)``. The leader (the argmax of ``Q``) never exits.

    With ``Q`` counting rounds won and two evenly matched members, each verified round moves the lead
    by ±1 with probability ½, so after ``t`` rounds the lead has mean 0 and standard deviation
    ``sqrt(t)``: the rule is a one-sided z-test of "the leader wins more often" at the level of ``z``
    (1.645: 5%). With z = 1.645, 2 wins to 1 after 3 rounds is not enough but 3 to 0 is (3 ≥ 2.85),
    and after 16 rounds it takes 12 to 4 (lead 8 ≥ 6.58). ``p`` reports ``softmax(Q)`` and ``entropy``
    its normalised entropy, for the trace.
    """
    n = len(cumulative_quality)
    if n < 2:
        return ExitDecision([], [1.0] * n, 0.0)
    p = softmax(cumulative_quality)
    entropy = normalized_entropy(p)
    if rounds_done < min_rounds:
        return ExitDecision([], p, entropy)
    leader = max(range(n), key=lambda i: (cumulative_quality[i], -i))
    needed = z * math.sqrt(rounds_done)
    exiting = [i for i in range(n) if i != leader and cumulative_quality[leader] - cumulative_quality[i] >= needed]
    return ExitDecision(exiting, p, entropy)


@dataclass(frozen=True)
class ExitEvidence:
    """Model exit's evidence kept across requests (``keep_exits``): each drafter's cumulative ``Q``,
    the verified rounds ``t`` behind it, and the members that exited, with their reasons.

    A request decides with ``Q = kept Q + its own Q`` and ``t = kept t + its own t``; when it ends, its
    own ``Q`` and ``t`` are added (:meth:`add`). A member in ``exited`` takes no part in later requests.
    """

    quality: Mapping[str, float] = field(default_factory=dict)
    rounds: int = 0
    exited: Mapping[str, str] = field(default_factory=dict)

    def add(self, quality: Mapping[str, float], rounds: int) -> ExitEvidence:
        """This evidence plus one request's ``Q`` and verified rounds."""
        total = dict(self.quality)
        for name, q in quality.items():
            total[name] = total.get(name, 0.0) + q
        return ExitEvidence(total, self.rounds + rounds, dict(self.exited))

    def with_exit(self, member: str, reason: str) -> ExitEvidence:
        """This evidence with ``member`` kept out of later requests."""
        return ExitEvidence(dict(self.quality), self.rounds, {**self.exited, member: reason})


def hedge_rewards(raw_scores: Sequence[Sequence[float | None]], proposer_columns: Sequence[Sequence[int]]) -> list[float]:
    """SpecEM reward of each scorer-member i in one round.

    ``r_i`` is the share of pairs (other scorer j ≠ i, other candidate k not proposed by i) for which
    ``s_j(i's candidate) ≥ s_j(k)``. ``raw_scores[j][c]`` is scorer j's score of candidate c and
    ``proposer_columns[i]`` lists the candidates member i proposed (empty: reward 0).
    """
    n = len(raw_scores)
    rewards = [0.0] * n
    for i in range(n):
        own = list(proposer_columns[i])
        if not own:
            continue
        wins = pairs = 0
        for j in range(n):
            if j == i:
                continue
            row = raw_scores[j]
            mine = max((row[c] for c in own if row[c] is not None), default=None)
            if mine is None:
                continue
            for k, s in enumerate(row):
                if k in own or s is None:
                    continue
                pairs += 1
                wins += mine >= s
        rewards[i] = wins / pairs if pairs else 0.0
    return rewards


def hedge_learning_rate(eta0: float, n_members: int, t: int, schedule: str) -> float:
    """``η_t = η0 / sqrt(N) / t`` (reference, ``1/t``) or ``η0 / sqrt(N) / sqrt(t)`` (``1/sqrt(t)``)."""
    decay = t if schedule == "1/t" else math.sqrt(t)
    return eta0 / math.sqrt(n_members) / decay


def hedge_update(weights: Sequence[float], rewards: Sequence[float], eta: float) -> list[float]:
    """``w_i ← w_i · exp(η · r_i)``, renormalised to sum to 1."""
    raw = [w * math.exp(eta * r) for w, r in zip(weights, rewards)]
    total = sum(raw)
    return [w / total for w in raw]
