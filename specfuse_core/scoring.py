"""The scoring math of one round, as pure functions (docs/algorithm.md §3, steps 4–6).

Notation follows the spec: ``s_j(i)`` is scorer j's score of candidate i, ``ŝ_j(i)`` the score after
normalising over candidates, ``w_j`` the scorer weights and ``score(i) = Σ_j w_j · ŝ_j(i)``.
A score matrix is a list of rows, one per scorer, one column per candidate; ``None`` marks a
score that does not vote (an excluded self-score).

Normalisations (``FusionConfig.normalize``), each one scorer's row ``s_j`` → ``ŝ_j`` summing to 1:

- ``sum``:        ``s_j(i) / Σ_m s_j(m)``, log-domain scores exponentiated first (the paper);
- ``softmax``:    ``exp(s_j(i)/T) / Σ_m exp(s_j(m)/T)``;
- ``ratio``:      ``s_j(i) / Σ_m s_j(m)`` on the raw scores, never exponentiated (the reference code;
  with ``mean_logit`` it is the reference exactly);
- ``calibrated``: ``exp(s_j(i)/S_j) / Σ_m exp(s_j(m)/S_j)`` where ``S_j`` is scorer j's *typical
  margin*, the running mean over rounds of its spread ``Δ_j = mean_{i<k} |s_j(i) − s_j(k)|``. A margin
  of one typical margin is worth the same vote (e^1 : 1, 0.73 / 0.27) for every scorer, so a scorer
  whose probabilities are sharp cannot outvote one whose probabilities are flat;
- ``rank``:       Borda count, ``ŝ_j(i) = (#{k: s_j(k) < s_j(i)} + ½ #{k ≠ i: s_j(k) = s_j(i)}) / C(n, 2)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .config import FusionConfig, Normalization, ScoreMode

LOG_DOMAIN_MODES = ("mean_logprob", "mean_logit")
STATEFUL_NORMALIZATIONS = ("calibrated",)

ScoreRow = list[float | None]


@dataclass(frozen=True)
class MarginScale:
    """A scorer's typical margin ``S_j``: the running mean of its per-round spreads ``Δ_j``.

    ``total`` is ``Σ Δ_j`` over the ``rounds`` it has seen. The engine keeps one per scorer per request
    (and across requests with ``keep_weights``).
    """

    total: float = 0.0
    rounds: int = 0

    @property
    def value(self) -> float:
        """``S_j = total / rounds`` (0 before any round)."""
        return self.total / self.rounds if self.rounds else 0.0


def candidate_score(
    token_logprobs: Sequence[float], token_logits: Sequence[float], mode: ScoreMode, n_tokens: int | None = None
) -> float:
    """``s_j(i)``: one scorer's score of one candidate from its per-token values.

    - ``mean_prob``:    (1/n) Σ_t p(x_t | x_<t)
    - ``mean_logprob``: (1/n) Σ_t log p(x_t | x_<t)
    - ``mean_logit``:   (1/n) Σ_t z(x_t | x_<t)   (the reference code's score)

    ``n_tokens`` limits the mean to the first ``n_tokens`` tokens (``score_span="leading"``).
    """
    if n_tokens is not None:
        token_logprobs, token_logits = token_logprobs[:n_tokens], token_logits[:n_tokens]
    if mode == "mean_logit":
        values = [float(z) for z in token_logits]
    elif mode == "mean_logprob":
        values = [float(lp) for lp in token_logprobs]
    else:
        values = [math.exp(lp) for lp in token_logprobs]
    if not values:
        raise ValueError("a candidate must have at least one scored token")
    return sum(values) / len(values)


def leading_span(token_counts: Sequence[int]) -> int:
    """``score_span="leading"``: every candidate is scored over ``min_i n_j(i)`` leading tokens, the
    length of the shortest candidate in scorer j's tokenization, so a short candidate is not favoured
    just because the first tokens after a boundary are the easy ones."""
    if not token_counts or min(token_counts) < 1:
        raise ValueError("every candidate needs at least one scored token")
    return min(token_counts)


def preference_spread(scores: ScoreRow) -> float | None:
    """``Δ_j = mean_{i<k} |s_j(i) − s_j(k)|`` over the voting candidates (the margin, for two);
    ``None`` when fewer than two candidates vote."""
    values = [float(s) for s in scores if s is not None]
    if len(values) < 2:
        return None
    pairs = [abs(a - b) for i, a in enumerate(values) for b in values[i + 1 :]]
    return sum(pairs) / len(pairs)


def update_margin_scale(scale: MarginScale, scores: ScoreRow) -> MarginScale:
    """``S_j`` after one more round: ``Δ_j`` of this row joins the running mean (unchanged if no ``Δ_j``)."""
    spread = preference_spread(scores)
    if spread is None:
        return scale
    return MarginScale(scale.total + spread, scale.rounds + 1)


def calibrated_row(scores: ScoreRow, typical_margin: float) -> list[float]:
    """``ŝ_j(i) = exp(s_j(i)/S_j) / Σ_m exp(s_j(m)/S_j)``: this round's margins in units of the
    scorer's typical margin ``S_j``. ``S_j = 0`` (no spread seen yet) gives a uniform vote."""
    if typical_margin > 0:
        return _softmax_row(scores, typical_margin)
    return _uniform_row(scores)


def rank_row(scores: ScoreRow) -> list[float]:
    """Borda vote: ``ŝ_j(i) = (#{k: s_j(k) < s_j(i)} + ½ #{k ≠ i: s_j(k) = s_j(i)}) / C(n, 2)``."""
    voting = [i for i, s in enumerate(scores) if s is not None]
    out = [0.0] * len(scores)
    if len(voting) < 2:
        return _uniform_row(scores)
    pairs = len(voting) * (len(voting) - 1) / 2
    for i in voting:
        below = sum(1 for k in voting if scores[k] < scores[i])  # type: ignore[operator]
        tied = sum(1 for k in voting if k != i and scores[k] == scores[i])
        out[i] = (below + 0.5 * tied) / pairs
    return out


def ratio_row(scores: ScoreRow) -> list[float]:
    """``ŝ_j(i) = s_j(i) / Σ_m s_j(m)`` on the raw scores, whatever their domain (the reference code).
    A zero total gives a uniform vote."""
    voting = [i for i, s in enumerate(scores) if s is not None]
    out = [0.0] * len(scores)
    total = sum(float(scores[i]) for i in voting)  # type: ignore[arg-type]
    if not voting or total == 0:
        return _uniform_row(scores)
    for i in voting:
        out[i] = float(scores[i]) / total  # type: ignore[arg-type]
    return out


def _uniform_row(scores: ScoreRow) -> list[float]:
    voting = [i for i, s in enumerate(scores) if s is not None]
    return [1.0 / len(voting) if s is not None else 0.0 for s in scores]


def _softmax_row(scores: ScoreRow, temperature: float) -> list[float]:
    voting = [i for i, s in enumerate(scores) if s is not None]
    out = [0.0] * len(scores)
    if not voting:
        return out
    top = max(float(scores[i]) / temperature for i in voting)  # type: ignore[arg-type]
    exps = {i: math.exp(float(scores[i]) / temperature - top) for i in voting}  # type: ignore[arg-type]
    total = sum(exps.values())
    for i, e in exps.items():
        out[i] = e / total
    return out


def normalize_row(
    scores: ScoreRow,
    method: Normalization,
    *,
    mode: ScoreMode = "mean_prob",
    temperature: float = 1.0,
    typical_margin: float | None = None,
) -> list[float]:
    """``ŝ_j``: one scorer's scores normalised over candidates so that they sum to 1.

    ``sum`` divides by the total: ``ŝ_j(i) = s_j(i) / Σ_m s_j(m)``. Log-domain scores
    (``mean_logprob``, ``mean_logit``) can be negative, so ``sum`` first maps them through ``exp``,
    which makes it equal to ``softmax`` at temperature 1. ``softmax`` computes
    ``exp(s_j(i)/T) / Σ_m exp(s_j(m)/T)``. ``ratio``, ``calibrated`` (needs ``typical_margin``, the
    scorer's ``S_j``) and ``rank`` are :func:`ratio_row`, :func:`calibrated_row` and :func:`rank_row`.
    ``None`` entries get 0 and take no share.
    """
    if method == "ratio":
        return ratio_row(scores)
    if method == "rank":
        return rank_row(scores)
    if method == "calibrated":
        if typical_margin is None:
            raise ValueError("calibrated normalisation needs the scorer's typical margin")
        return calibrated_row(scores, typical_margin)
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
    matrix: Sequence[ScoreRow],
    method: Normalization,
    *,
    mode: ScoreMode = "mean_prob",
    temperature: float = 1.0,
    typical_margins: Sequence[float] | None = None,
) -> list[list[float]]:
    """Apply :func:`normalize_row` to every scorer's row (``typical_margins``: one ``S_j`` per row)."""
    margins: Sequence[float | None] = typical_margins if typical_margins is not None else [None] * len(matrix)
    return [
        normalize_row(list(row), method, mode=mode, temperature=temperature, typical_margin=s)
        for row, s in zip(matrix, margins)
    ]


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


def coin_key(text: str) -> bytes:
    """A fair coin for ties (``tie_break="coin"``): the tied candidate with the smallest key wins.

    SHA-256 of the candidate's text: uniform over candidates, so no member is favoured in expectation,
    and the same candidates always give the same winner (greedy answers stay reproducible).
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def select_winner(
    totals: Sequence[float],
    self_scores: Sequence[float],
    first_drafter: Sequence[int],
    *,
    lengths: Sequence[int] | None = None,
    tolerance: float = 0.0,
    eligible: Sequence[bool] | None = None,
    coin: Sequence[bytes] | None = None,
) -> int:
    """The argmax of ``totals``; ties go to the higher mean self-score, then to the earlier member.

    With ``lengths`` (``score_span="leading"``) a tie goes to the longer candidate first. With ``coin``
    (``tie_break="coin"``, one :func:`coin_key` per candidate) a remaining tie goes to the smallest key
    instead of the self-score. Totals within ``tolerance`` of the best count as tied (scores of the same
    leading tokens from different batch rows can differ in the last float digits). With ``eligible``,
    only those candidates can win.
    """
    candidates = [i for i in range(len(totals)) if eligible is None or eligible[i]]
    if not candidates:
        raise ValueError("no candidates to select from")
    best = max(round(totals[i], 12) for i in candidates)
    tied = [i for i in candidates if round(totals[i], 12) >= best - tolerance]
    return min(
        tied,
        key=lambda i: (
            -(lengths[i] if lengths is not None else 0),
            coin[i] if coin is not None else b"",
            -round(self_scores[i], 12),
            first_drafter[i],
        ),
    )


def mean_self_scores(
    matrix: Sequence[ScoreRow], scorer_names: Sequence[str], drafters: Sequence[Collection[str]]
) -> list[float]:
    """Each candidate's mean raw score from the scorers that drafted it (``-inf`` when none of them
    scored it): the tie-break of ``tie_break="self_score"``. ``drafters[i]``: who drafted candidate i."""
    out = []
    for i, names in enumerate(drafters):
        values = [matrix[j][i] for j, name in enumerate(scorer_names) if name in names]
        own = [float(v) for v in values if v is not None]
        out.append(sum(own) / len(own) if own else float("-inf"))
    return out


def voting_scores(
    matrix: Sequence[ScoreRow], scorer_names: Sequence[str], drafters: Sequence[Collection[str]], exclude_self: bool
) -> list[ScoreRow]:
    """The scores that vote: the raw matrix, or with ``exclude_self`` (``exclude_self_scores``) every
    scorer's scores of its own drafts blanked. Calibrated margins are updated from these rows."""
    if not exclude_self:
        return [list(row) for row in matrix]
    return exclude_self_scores(matrix, [[name in names for names in drafters] for name in scorer_names])


def round_winner(
    matrix: Sequence[ScoreRow],
    scorer_names: Sequence[str],
    drafters: Sequence[Collection[str]],
    weights: Sequence[float],
    order: Mapping[str, int],
    config: FusionConfig,
    *,
    texts: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    typical_margins: Sequence[float] | None = None,
    eligible: Sequence[bool] | None = None,
) -> tuple[list[float], int]:
    """A verified round's totals and winner under ``config`` (§3, steps 5–6): the voting scores
    (:func:`voting_scores`) normalised per scorer, aggregated with ``weights`` rescaled to sum to 1, and
    the winner by :func:`select_winner` with the configuration's tie-breaks.

    - ``matrix[j][i]``: scorer ``scorer_names[j]``'s raw score of candidate i; ``drafters[i]``: the
      members that drafted candidate i;
    - ``weights``: one weight per scorer (a weight of 0 does not vote; all 0: every row weighs 0);
    - ``order``: each member's position in the ensemble (a tie's last resort: the earlier member);
    - ``texts``: the candidates' texts, needed when the tie-break is ``coin``;
    - ``lengths``: ``len(text) + ends`` per candidate, needed with ``score_span="leading"``;
    - ``typical_margins``: each scorer's ``S_j`` (already updated with this round), needed with
      ``normalize="calibrated"``;
    - ``eligible``: the candidates allowed to win (default: all).
    """
    voting = voting_scores(matrix, scorer_names, drafters, config.exclude_self_scores)
    normalized = normalize_matrix(
        voting,
        config.normalize,
        mode=config.score_mode,
        temperature=config.softmax_temperature,
        typical_margins=typical_margins,
    )
    total_weight = sum(weights) or 1.0
    totals = aggregate(normalized, [w / total_weight for w in weights])
    coin = None
    if config.effective_tie_break == "coin":
        if texts is None:
            raise ValueError("tie_break='coin' needs the candidates' texts")
        coin = [coin_key(text) for text in texts]
    leading = config.score_span == "leading"
    if leading and lengths is None:
        raise ValueError("score_span='leading' needs the candidates' lengths")
    winner = select_winner(
        totals,
        mean_self_scores(matrix, scorer_names, drafters),
        [min(order[name] for name in names) for names in drafters],
        lengths=lengths if leading else None,
        tolerance=1e-6 if leading else 0.0,
        eligible=eligible,
        coin=coin,
    )
    return totals, winner
