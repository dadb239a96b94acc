"""`FusionConfig`: every option of the SpecFuse round loop, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cache
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

ScoreMode = Literal["mean_prob", "mean_logprob", "mean_logit"]
Normalization = Literal["sum", "softmax", "ratio", "calibrated", "rank"]
ScoreSpan = Literal["full", "leading"]
WeightSchedule = Literal["1/t", "1/sqrt(t)"]
ExitQuality = Literal["wins", "scores"]
ExitRule = Literal["entropy", "lead"]
ToolVote = Literal["native", "all"]
TieBreak = Literal["self_score", "coin"]
ContextOverflow = Literal["fail", "exit"]

SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
SCORE_SPANS: tuple[str, ...] = get_args(ScoreSpan)
EXIT_RULES: tuple[str, ...] = get_args(ExitRule)
WEIGHT_SCHEDULES: tuple[str, ...] = get_args(WeightSchedule)
EXIT_QUALITIES: tuple[str, ...] = get_args(ExitQuality)
TOOL_VOTES: tuple[str, ...] = get_args(ToolVote)
TIE_BREAKS: tuple[str, ...] = get_args(TieBreak)
CONTEXT_OVERFLOWS: tuple[str, ...] = get_args(ContextOverflow)
FAIR_NORMALIZATIONS: tuple[str, ...] = ("calibrated", "rank")
"""Normalisations meant to give every scorer an equally loud vote: their ties break by ``coin``."""

DEFAULT_DRAFT_TEMPERATURE = 0.6
DEFAULT_DRAFT_TOP_P = 0.9


def _option(default: Any, help: str, *, per_request: bool = True) -> Any:
    """A ``FusionConfig`` field with the help text every front door shows for it.

    ``per_request=False`` marks state that lives across requests on one ensemble (the operator's
    choice for a server, not one client's).
    """
    return field(default=default, metadata={"help": help, "per_request": per_request})


@dataclass(frozen=True)
class FusionConfig:
    """Options of one SpecFuse request (docs/algorithm.md §3–§8 give the meaning of each).

    ``temperature=None`` means the reference defaults (0.6, top_p 0.9); ``temperature=0`` is greedy.

    ``exit_quality`` is what model exit accumulates per member in ``Q``: ``"wins"`` (default) adds 1
    for each verified round the member's candidate wins, so ``exit_temperature`` is measured in rounds
    won; ``"scores"`` adds the candidate's aggregated score, as docs/algorithm.md §4 words it. Aggregated
    scores of fluent candidates sit close together (two members split about 0.49/0.51 a round), so with
    ``"scores"`` exit needs a much lower ``exit_temperature`` to ever fire.

    ``normalize``: ``sum`` (paper), ``softmax``, ``ratio`` (the reference code's plain ``s / Σ s``;
    with ``score_mode="mean_logit"`` exactly the reference), ``calibrated`` (each scorer's margin in
    units of its own running typical margin; the state is kept per request, and across requests with
    ``keep_weights``) or ``rank`` (Borda, ties shared). See :mod:`specfuse_core.scoring`.

    ``score_span``: ``full`` scores every candidate over all its tokens; ``leading`` scores every
    candidate over the shortest candidate's token count (per scorer) and breaks ties towards the
    longer candidate, which removes the mean score's preference for short candidates.

    ``tie_break``: who wins a round whose aggregated scores tie. ``self_score`` gives it to the
    candidate whose drafters scored it highest (the most self-confident member), then to the earlier
    member; ``coin`` to a fair coin seeded by the candidates' texts (reproducible, favouring no member).
    ``None`` (default) means ``coin`` with ``calibrated`` and ``rank``, whose votes tie by design when
    every scorer prefers its own draft by its typical margin (as in a request's first contested round,
    when each prefers its own), and ``self_score`` otherwise. ``score_span="leading"`` prefers the
    longer candidate first.

    ``exit_rule``: ``entropy`` (docs/algorithm.md §4) or ``lead``: after ``exit_min_rounds`` verified
    rounds ``t``, a member exits when the leader's ``Q`` exceeds its own by at least
    ``exit_lead_z · sqrt(t)``, a lead significant for the number of rounds played (with ``wins``, a
    one-sided z-test against evenly matched members; 1.645 is the 5% level).

    ``keep_exits`` (with ``exit_rule="lead"``): model exit across requests. ``Q`` and the verified
    rounds add up over the ensemble's requests, and a member that exits stays out of later requests
    (its reason is in each later result's ``exits``) until :meth:`Ensemble.readmit`. Rounds of one
    answer are not independent, so ask for a stricter lead (``exit_lead_z=3``) than within a request.

    ``tool_vote``: with tools offered under ``tool_choice="auto"``, a round whose candidates disagree on
    whether to open a tool call decides exactly that. ``native`` (default) lets only the scorers whose
    own chat template shows the tools (models trained to call them) vote in such a round, when at least
    one such scorer is active and not all are; ``all`` lets every scorer vote as in any other round.
    Every other round, inside a call included, is voted by all scorers.
    """

    segment_tokens: int = _option(10, "tokens each member drafts per round")
    max_tokens: int = _option(512, "answer budget, counted in the first member's tokens")
    temperature: float | None = _option(None, "draft temperature; 0 is greedy (default 0.6 with top_p 0.9)")
    top_p: float | None = _option(None, "nucleus sampling mass of the drafts")
    seed: int | None = _option(None, "seed for reproducible sampling")
    stop: tuple[str, ...] = _option((), "stop strings: the answer is cut before the first one")
    score_mode: ScoreMode = _option(
        "mean_prob", "per-candidate score: mean_prob (paper), mean_logprob, mean_logit (reference code)"
    )
    normalize: Normalization = _option("sum", (
        "per-scorer normalisation: sum (paper), softmax, ratio (reference code), calibrated (margins in "
        "each scorer's typical margin), rank (Borda)"))  # fmt: skip
    softmax_temperature: float = _option(1.0, "temperature of normalize=softmax")
    score_span: ScoreSpan = _option(
        "full", "score all tokens (full) or the shortest candidate's leading tokens (leading)"
    )
    tie_break: TieBreak | None = _option(None, (
        "who wins tied scores: the most self-confident member (self_score) or a fair coin seeded by the "
        "candidates (coin); default coin with calibrated and rank, else self_score"))  # fmt: skip
    exclude_self_scores: bool = _option(False, "a scorer does not vote on its own draft")
    cache: bool = _option(True, "keep KV caches across rounds (off: re-read the whole context every round)")
    # Model exit (docs/algorithm.md §4).
    exit: bool = _option(False, "model exit: drop members that keep losing")
    exit_min_rounds: int = _option(3, "verified rounds before an exit")
    exit_temperature: float = _option(1.0, "softmax temperature over Q")
    exit_entropy: float = _option(0.6, "the entropy rule fires below this normalised entropy")
    exit_share: float = _option(0.5, "the entropy rule: a member exits below this share of 1/n")
    exit_quality: ExitQuality = _option("wins", "what Q accumulates: rounds won (wins) or aggregated scores (scores)")
    exit_rule: ExitRule = _option(
        "entropy", "entropy of softmax(Q) (entropy) or a lead of exit_lead_z * sqrt(rounds) (lead)"
    )
    exit_lead_z: float = _option(1.645, "exit_rule=lead: the lead needed, in sqrt(verified rounds)")
    keep_exits: bool = _option(False, (
        "with exit_rule=lead: Q adds up across requests and a member that exits stays out of later ones "
        "(use a stricter exit_lead_z, e.g. 3)"), per_request=False)  # fmt: skip
    # Online weights (docs/algorithm.md §5).
    weights: bool = _option(False, "online (Hedge) weights over scorers")
    weights_eta0: float = _option(1.0, "Hedge learning rate eta0")
    weights_schedule: WeightSchedule = _option("1/t", "decay of the Hedge learning rate")
    keep_weights: bool = _option(False, "carry weights (and calibrated scales) across requests", per_request=False)
    # Tools (docs/algorithm.md §9).
    tool_vote: ToolVote = _option("native", (
        "with tools: who votes on whether to call a tool: the members whose templates show the tools "
        "(native) or every member (all)"))  # fmt: skip
    # The work one request may cause (docs/algorithm.md §7): checked before any member works on it.
    context_overflow: ContextOverflow = _option("fail", (
        "a member that cannot hold the prompt plus max_tokens: fail the request (fail) or leave that "
        "member out of it (exit)"))  # fmt: skip
    max_prompt_tokens: int | None = _option(8192, (
        "the longest prompt (tools and schema instructions included) a member may be given, in its own "
        "tokens"), per_request=False)  # fmt: skip
    max_tools: int | None = _option(128, "the most tools one request may offer", per_request=False)
    max_schema_bytes: int | None = _option(65536, (
        "the largest tools list or response_format schema, in bytes of JSON (grammar compile time grows "
        "with it)"), per_request=False)  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        _require_int("segment_tokens", self.segment_tokens, minimum=1)
        _require_int("max_tokens", self.max_tokens, minimum=1)
        _require_int("exit_min_rounds", self.exit_min_rounds, minimum=1)
        if self.seed is not None:
            _require_int("seed", self.seed, minimum=0)
        if self.temperature is not None and not (_finite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_p is not None and not (_finite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.score_mode not in SCORE_MODES:
            raise ConfigError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {self.score_mode!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.score_span not in SCORE_SPANS:
            raise ConfigError(f"score_span must be one of {', '.join(SCORE_SPANS)}, got {self.score_span!r}")
        if self.tie_break is not None and self.tie_break not in TIE_BREAKS:
            raise ConfigError(f"tie_break must be one of {', '.join(TIE_BREAKS)} or None, got {self.tie_break!r}")
        if self.exit_rule not in EXIT_RULES:
            raise ConfigError(f"exit_rule must be one of {', '.join(EXIT_RULES)}, got {self.exit_rule!r}")
        if self.exit_quality not in EXIT_QUALITIES:
            raise ConfigError(
                f"exit_quality must be one of {', '.join(EXIT_QUALITIES)}, got {self.exit_quality!r}"
            )
        if self.keep_exits and self.exit and self.exit_rule != "lead":
            raise ConfigError(
                "keep_exits needs exit_rule='lead' (the entropy rule's softmax(Q) sharpens without end "
                "as Q adds up across requests)"
            )
        for name in ("max_prompt_tokens", "max_tools", "max_schema_bytes"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        if self.context_overflow not in CONTEXT_OVERFLOWS:
            raise ConfigError(
                f"context_overflow must be one of {', '.join(CONTEXT_OVERFLOWS)}, got {self.context_overflow!r}"
            )
        if self.tool_vote not in TOOL_VOTES:
            raise ConfigError(f"tool_vote must be one of {', '.join(TOOL_VOTES)}, got {self.tool_vote!r}")
        if self.weights_schedule not in WEIGHT_SCHEDULES:
            raise ConfigError(
                f"weights_schedule must be one of {', '.join(WEIGHT_SCHEDULES)}, got {self.weights_schedule!r}"
            )
        for name in ("softmax_temperature", "exit_temperature", "exit_lead_z"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        for name in ("exit_entropy", "exit_share"):
            value = getattr(self, name)
            if not (_finite(value) and 0 <= value <= 1):
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not (_finite(self.weights_eta0) and self.weights_eta0 >= 0):
            raise ConfigError(f"weights_eta0 must be >= 0, got {self.weights_eta0!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ConfigError("stop strings must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def draft_temperature(self) -> float:
        return DEFAULT_DRAFT_TEMPERATURE if self.temperature is None else float(self.temperature)

    @property
    def draft_top_p(self) -> float:
        if self.top_p is not None:
            return float(self.top_p)
        return DEFAULT_DRAFT_TOP_P if self.temperature is None else 1.0

    @property
    def effective_tie_break(self) -> TieBreak:
        """``tie_break``, with ``None`` resolved: ``coin`` for the fair normalisations, else ``self_score``."""
        if self.tie_break is not None:
            return self.tie_break
        return "coin" if self.normalize in FAIR_NORMALIZATIONS else "self_score"

    def replace(self, **changes: Any) -> FusionConfig:
        """A copy with ``changes`` applied (``None`` values are ignored), validated again."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown fusion option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class FusionOption:
    """One ``FusionConfig`` field as the front doors see it (derived from the dataclass, never copied).

    ``annotation`` is the resolved type (``Literal`` for options with ``choices``), ``default`` the
    field's default, ``help`` one line for flags and docs; ``per_request`` is false for state that lives
    across requests (``keep_weights``, ``keep_exits``), which a server leaves to its operator.
    """

    name: str
    annotation: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None
    per_request: bool

    @property
    def kind(self) -> type:
        """The plain Python type of a value: ``bool``, ``int``, ``float``, ``str`` or ``tuple``."""
        if self.choices is not None:
            return str
        annotation = self.annotation
        if get_origin(annotation) in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        return get_origin(annotation) or annotation

    @property
    def optional(self) -> bool:
        """Whether ``None`` is a valid value (it then means "the default behaviour")."""
        return get_origin(self.annotation) in (Union, UnionType) and type(None) in get_args(self.annotation)


@cache
def fusion_options() -> tuple[FusionOption, ...]:
    """Every fusion option, in declaration order: the one list the front doors derive theirs from."""
    hints = get_type_hints(FusionConfig)
    options = []
    for spec in dataclasses.fields(FusionConfig):
        annotation = hints[spec.name]
        literal = next((a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal), None)
        options.append(
            FusionOption(
                name=spec.name,
                annotation=annotation,
                default=spec.default,
                help=spec.metadata["help"],
                choices=get_args(literal) if literal is not None else None,
                per_request=spec.metadata["per_request"],
            )
        )
    return tuple(options)


def fusion_option_names(*, per_request: bool = False) -> frozenset[str]:
    """The names of the fusion options (only those a single request may set, with ``per_request``)."""
    return frozenset(o.name for o in fusion_options() if o.per_request or not per_request)
