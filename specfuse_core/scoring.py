"""The scoring math of one round, as pure functions (algorithm.md §3, steps 4–6).

Notation follows the spec: ``s_j(i)`` is scorer j's score of candidate i, ``ŝ_j(i)`` the score after
normalising over candidates, ``w_j`` the scorer weights and ``score(i) = Σ_j w_j · ŝ_j(i)``.
A score matrix is a list of rows, one per scorer, one column per candidate; ``None`` marks a
score that does not vote (an excluded self-score).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import Normalization, ScoreMode

LOG_DOMAIN_MODES = ("mean_logprob", "mean_logit")

ScoreRow = list[float | None]


def candidate_score(token_logprobs: Sequence[float], token_logits: Sequence[float], mode: ScoreMode) -> float:
    """``s_j(i)``: one scorer's score of one candidate from its per-token values.

    - ``mean_prob``:    (1/n) Σ_t p(x_t | x_<t)
    - ``mean_logprob``: (1/n) Σ_t log p(x_t | x_<t)
    - ``mean_logit``:   (1/n) Σ_t z(x_t | x_<t)   (the reference code's score)
    """
    if mode == "mean_logit":
        values = [float(z) for z in token_logits]
    elif mode == "mean_logprob":
        values = [float(lp) for lp in token_logprobs]
    else:
        values = [math.exp(lp) for lp in token_logprobs]
    if not values:
        raise ValueError("a candidate must have at least one scored token")
    return sum(values) / len(values)


def normalize_row(
    scores: ScoreRow, method: Normalization, *, mode: ScoreMode = "mean_prob", temperature: float = 1.0
) -> list[float]:
    """``ŝ_j``: one scorer's scores normalised over candidates so that they sum to 1.

    ``sum`` divides by the total: ``ŝ_j(i) = s_j(i) / Σ_m s_j(m)``. Log-domain scores
    (``mean_logprob``, ``mean_logit``) can be negative, so ``sum`` first maps them through ``exp``,
    which makes it equal to ``softmax`` at temperature 1. ``softmax`` computes
    ``exp(s_j(i)/T) / Σ_m exp(s_j(m)/T)``. ``None`` entries get 0 and take no share.
    """
    voting = [i for i, s in enumerate(scores) if s is not None]
    out = [0.0] * len(scores)
    if not voting:
        return out
    values = [float(scores[i]) for i in voting]  # type: ignore[arg-type]
    if method == "softmax" or mode in LOG_DOMAIN_MODES:
        scale = temperature if method == "softmax" else 1.0
        top = max(v / scale for v in values)
        values = [math.exp(v / scale - top) for v in values]
    else:
        values = [max(v, 0.0) for v in values]
    total = sum(values)
    for i, v in zip(voting, values):
        out[i] = v / total if total > 0 else 1.0 / len(voting)
    return out


def normalize_matrix(
    matrix: Sequence[ScoreRow], method: Normalization, *, mode: ScoreMode = "mean_prob", temperature: float = 1.0
) -> list[list[float]]:
    """Apply :func:`normalize_row` to every scorer's row."""
    return [normalize_row(list(row), method, mode=mode, temperature=temperature) for row in matrix]


def exclude_self_scores(matrix: Sequence[ScoreRow], scorer_proposed: Sequence[Sequence[bool]]) -> list[ScoreRow]:
    """Blank ``s_j(i)`` wherever scorer j proposed candidate i itself."""
    return [
        [None if own else s for s, own in zip(row, proposed)] for row, proposed in zip(matrix, scorer_proposed)
    ]


def aggregate(normalized: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """``score(i) = Σ_j w_j · ŝ_j(i)``."""
    if len(normalized) != len(weights):
        raise ValueError("one weight per scorer row is required")
    n_candidates = len(normalized[0]) if normalized else 0
    return [sum(w * row[i] for w, row in zip(weights, normalized)) for i in range(n_candidates)]


def select_winner(totals: Sequence[float], self_scores: Sequence[float], first_drafter: Sequence[int]) -> int:
    """The argmax of ``totals``; ties go to the higher mean self-score, then to the earlier member."""
    if not totals:
        raise ValueError("no candidates to select from")
    return min(
        range(len(totals)),
        key=lambda i: (-round(totals[i], 12), -round(self_scores[i], 12), first_drafter[i]),
    )
