"""IFEval accuracy and cost of each member alone and of SpecFuse variants, paired against the best member.

Run it as ``specfuse eval`` (or ``python -m specfuse_eval.quality``; ``python -m benchmarks.quality`` in
a source checkout), with the IFEval prompts given by ``--data``:

    specfuse eval --data ifeval.jsonl --limit 10 --max-tokens 128 --json

``--data`` is a JSONL file of IFEval prompts, one ``{"key", "prompt", "instruction_id_list", "kwargs"}``
object per line, as in google-research's ``instruction_following_eval/data/input_data.jsonl``.
Without ``--data``, ``../shared/data/ifeval/dev.jsonl`` is used if it exists from the current directory.

Every configuration answers the same IFEval prompts with greedy decoding (temperature 0), the same
chat template and the same token budget. "Member alone" is an ensemble of that one member: every
round is a consensus round with one draft call, so its decoding is exactly the member's greedy
continuation through the same session code the ensemble uses.

Responses are cached per (configuration, prompt) as JSON files under
``<results>/<run-id>/<configuration>[-<options hash>]/<key>.json`` (the run id encodes members, budget
and segment length; the hash every fusion option, so a changed default or a ``--fusion KEY=VALUE``
override never reuses stale answers), so an interrupted run continues where it stopped. Prompts are
processed prompt-major (every configuration answers prompt 1, then prompt 2, ...) so an interrupted
run has the same N everywhere. ``--results`` defaults to ``benchmarks/results/quality`` under the
current directory, created when missing.

Outputs: ``results.md`` (a table) and ``quality.png`` (prompt-level accuracy vs member calls per
round) in the run directory; ``--json`` prints one JSON object as the last line. Scoring needs the
``eval`` extra: ``pip install 'specfuse[eval]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import DataNotFoundError, MissingDependencyError, require

DEFAULT_DATA = "../shared/data/ifeval/dev.jsonl"
"""Used when ``--data`` is not given, if it exists from the current directory (a source checkout beside
the shared data sets)."""
DEFAULT_RESULTS = "benchmarks/results/quality"
FUSION_CONFIGS: dict[str, dict[str, Any]] = {
    "specfuse": {},
    "specfuse+exit": {"exit": True},
    "specfuse+weights": {"weights": True},
    "specfuse+exit+weights": {"exit": True, "weights": True},
    # Fair votes (normalisations that give every scorer the same say). Not in "all"; name them in --configs.
    "specfuse+logit": {"score_mode": "mean_logit"},
    "specfuse+reference": {"score_mode": "mean_logit", "normalize": "ratio"},
    "specfuse+calibrated": {"normalize": "calibrated"},
    "specfuse+calibrated+leading": {"normalize": "calibrated", "score_span": "leading"},
    "specfuse+leading": {"score_span": "leading"},
    "specfuse+rank": {"normalize": "rank"},
    "specfuse+calibrated+exit": {"normalize": "calibrated", "exit": True, "exit_rule": "lead"},
    "specfuse+logit+exit": {"score_mode": "mean_logit", "exit": True, "exit_rule": "lead"},
    "specfuse+lead-exit": {"exit": True, "exit_rule": "lead"},
    # Exit across requests: answered one at a time in prompt order (each answer depends on the ones before).
    "specfuse+keep-exit": {"exit": True, "exit_rule": "lead", "keep_exits": True, "exit_lead_z": 3.0},
}
DEFAULT_CONFIGS = ("specfuse", "specfuse+exit", "specfuse+weights", "specfuse+exit+weights")  # "all"
MEMBERS_ALIAS = "members"  # in --configs: every member alone
LATER_OPTIONS: dict[str, Any] = {
    "keep_exits": False,
    "context_overflow": "fail",
    "max_prompt_tokens": 8192,
    "max_tools": 128,
    "max_schema_bytes": 65536,
}
"""Fusion options added after answers were cached, with their defaults: at the default an option stays
out of the cache hash, so adding it keeps every cached answer it does not change."""
TOOL_ONLY_OPTIONS = ("tool_vote",)
"""Fusion options that act only when tools are offered: IFEval answers never depend on them, so they
stay out of the cache hash (adding one does not throw away cached answers)."""


# -- data and configurations ----------------------------------------------------------------------


def resolve(path: str | os.PathLike[str]) -> Path:
    """A path as given, relative paths taken from the current directory (``~`` expanded)."""
    return Path(path).expanduser().resolve()


def data_path(
    given: str | os.PathLike[str] | None, *, default: str = DEFAULT_DATA, what: str = "IFEval prompts (JSONL)"
) -> Path:
    """The data file or directory to read: ``given``, else ``default`` if it exists from the current
    directory. Raises :class:`~specfuse_eval.DataNotFoundError` saying what is missing and how to pass it."""
    path = resolve(given if given is not None else default)
    if path.exists():
        return path
    if given is not None:
        raise DataNotFoundError(f"{what}: {path} does not exist (given by --data {given})")
    raise DataNotFoundError(f"{what}: no --data given and the default {default} does not exist from "
                            f"{Path.cwd()} (looked for {path}); pass the data with --data PATH")  # fmt: skip


def load_prompts(path: str | os.PathLike[str] | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` IFEval rows of the JSONL file ``path`` (``None``: the default, see :func:`data_path`)."""
    rows: list[dict[str, Any]] = []
    with open(data_path(path), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def member_label(spec: str) -> str:
    """The configuration name of a member alone: its spec's last path component, without roles."""
    return Path(spec.split("::")[0].rstrip("/")).name or spec


def expand_configs(requested: Sequence[str] | None, member_specs: Sequence[str]) -> list[str]:
    """Configuration names in run order: members alone first, then the SpecFuse variants."""
    labels = [member_label(s) for s in member_specs]
    items: list[str] = []
    for entry in requested or [MEMBERS_ALIAS, *DEFAULT_CONFIGS]:
        items.extend(x.strip() for x in entry.split(",") if x.strip())
    names: list[str] = []
    for item in items:
        expanded = labels if item in (MEMBERS_ALIAS, "all") else [item]
        if item == "all":
            expanded = [*labels, *DEFAULT_CONFIGS]
        for name in expanded:
            if name not in labels and name not in FUSION_CONFIGS:
                known = ", ".join([MEMBERS_ALIAS, "all", *labels, *FUSION_CONFIGS])
                raise SystemExit(f"unknown configuration {name!r} (known: {known})")
            if name not in names:
                names.append(name)
    return names


def run_id(member_specs: Sequence[str], max_tokens: int, segment_tokens: int, dtype: str = "float32") -> str:
    """A directory name for one set of generation settings: changing them never reuses stale answers.

    ``dtype`` is what the local members compute in; float32 leaves the name as before dtypes counted."""
    settings: dict[str, Any] = {"members": list(member_specs), "max_tokens": max_tokens,
                                "segment_tokens": segment_tokens, "temperature": 0}  # fmt: skip
    if dtype != "float32":
        settings["dtype"] = dtype
    blob = json.dumps(settings)
    return f"mt{max_tokens}-seg{segment_tokens}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


# -- the resumable response cache -------------------------------------------------------------------


def fusion_config(config: str, overrides: dict[str, Any], configs: dict[str, dict[str, Any]] = FUSION_CONFIGS) -> Any:
    """The :class:`~specfuse_core.FusionConfig` of a fused configuration (generation settings at their defaults)."""
    from specfuse_core import FusionConfig

    return FusionConfig(**{**configs[config], **overrides})


def fusion_options(
    config: str,
    overrides: dict[str, Any],
    *,
    configs: dict[str, dict[str, Any]] = FUSION_CONFIGS,
    tool_options: bool = False,
) -> dict[str, Any]:
    """Every FusionConfig option of a fused configuration in ``configs`` (validated), generation
    settings aside, and tool-only options too unless ``tool_options``."""
    fusion = fusion_config(config, overrides, configs)
    options = dataclasses.asdict(fusion)
    # The tie-break as it acts; the old one (self_score) stays out of the hash, so that adding the
    # option kept every cached answer that it does not change.
    options["tie_break"] = fusion.effective_tie_break
    if options["tie_break"] == "self_score":
        del options["tie_break"]
    for name, default in LATER_OPTIONS.items():
        if options[name] == default:
            del options[name]
    for generation_setting in ("extra", "temperature", "top_p", "seed", "max_tokens", "segment_tokens", "stop"):
        options.pop(generation_setting, None)  # "extra" is not a field of every FusionConfig version
    if not tool_options:
        for tool_option in TOOL_ONLY_OPTIONS:
            options.pop(tool_option)
    return options


def options_hash(options: dict[str, Any]) -> str:
    """Eight hex digits that change with any option: part of a cache directory's name."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]


def cache_dirname(config: str, overrides: dict[str, Any]) -> str:
    """``specfuse+exit-1a2b3c4d``: the configuration plus a hash of all its fusion options."""
    if config not in FUSION_CONFIGS:
        return config
    return f"{config}-{options_hash(fusion_options(config, overrides))}"


def parse_fusion_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["score_mode=mean_logprob", "exit_temperature=0.5"]`` → a dict (values parsed as JSON when they can be)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--fusion takes KEY=VALUE, got {pair!r}")
        try:
            overrides[name] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name] = raw
    return overrides


class ResponseCache:
    """One JSON file per (configuration, prompt key), written atomically.

    ``dirnames`` maps a configuration to its directory (default: its name)."""

    def __init__(self, root: str | os.PathLike[str], dirnames: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.dirnames = dict(dirnames or {})

    def path(self, config: str, key: Any) -> Path:
        return self.root / self.dirnames.get(config, config) / f"{key}.json"

    def get(self, config: str, key: Any) -> dict[str, Any] | None:
        path = self.path(config, key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # missing, or a torn write from an older interrupted run: answer again
        return record if isinstance(record, dict) and "response" in record else None

    def put(self, config: str, key: Any, record: dict[str, Any]) -> None:
        path = self.path(config, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.replace(tmp, path)


def run_all(
    prompts: Sequence[dict[str, Any]],
    configs: Sequence[str],
    cache: ResponseCache,
    answer: Any,
    *,
    log: Any = None,
    concurrency: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """Answer every (prompt, configuration) pair not yet cached, prompt-major; return all records.

    ``answer(config, prompt_row) -> record`` does the generation; it is called only for missing pairs.
    With ``concurrency > 1`` up to that many prompts of one configuration are answered at once (an
    ensemble batches concurrent requests' forward passes; greedy answers equal the sequential ones,
    per-answer seconds do not). Configurations still run one after another: ensembles that place
    the same members differently must not run at the same time (their threads would oversubscribe).
    """
    pairs = [(row, config) for row in prompts for config in configs]  # prompt-major: the order of a sequential run
    answered: dict[tuple[int, str], dict[str, Any]] = {}

    def one(index: int, config: str) -> tuple[dict[str, Any], str]:
        row = prompts[index]
        record = cache.get(config, row["key"])
        if record is not None:
            return record, "cached"
        if keeps_exits(config):
            record = answer(config, row, earlier=[answered[(i, config)] for i in range(index)])
        else:
            record = answer(config, row)
        record.setdefault("key", row["key"])
        record.setdefault("config", config)
        cache.put(config, row["key"], record)
        return record, "new"

    def note(index: int, config: str, record: dict[str, Any], status: str) -> None:
        answered[(index, config)] = record
        if log is not None:
            log(f"[{len(answered)}/{len(pairs)}] {config} key={prompts[index]['key']} {status} "
                f"rounds={record.get('rounds')} {record.get('seconds', 0):.1f}s")  # fmt: skip

    if concurrency <= 1:
        for index in range(len(prompts)):
            for config in configs:
                note(index, config, *one(index, config))
    else:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="answer")
        try:
            for config in configs:
                if keeps_exits(config):
                    for index in range(len(prompts)):
                        note(index, config, *one(index, config))
                    continue
                futures = [pool.submit(one, index, config) for index in range(len(prompts))]
                for index, future in enumerate(futures):
                    note(index, config, *future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # an interrupted run stops after the answers in flight
    records = {c: [answered[(i, c)] for i in range(len(prompts))] for c in configs}
    return records


def keeps_exits(config: str) -> bool:
    """Whether ``config`` carries model exit across requests: its answers must come in prompt order."""
    return bool(FUSION_CONFIGS.get(config, {}).get("keep_exits"))


def exit_evidence_from_records(records: Iterable[dict[str, Any]]) -> Any:
    """The :class:`~specfuse_core.policies.ExitEvidence` an ensemble with ``keep_exits`` (``exit_quality``
    wins) holds after answering ``records``: rounds won per member over the verified rounds (those with
    several candidates), and the members that exited on a significant lead. A resumed run starts from it."""
    from specfuse_core.policies import ExitEvidence

    evidence = ExitEvidence()
    for record in records:
        wins: dict[str, float] = {}
        rounds = 0
        for t in record.get("trace", []):
            if t.get("candidates", 0) > 1:
                rounds += 1
                for name in t["winners"]:
                    wins[name] = wins.get(name, 0.0) + 1
        evidence = evidence.add(wins, rounds)
        for x in record.get("exits", []):
            if x["reason"].startswith("significant lead") and x["member"] not in evidence.exited:
                evidence = evidence.with_exit(x["member"], x["reason"])
    return evidence


def loaded_on_first_use(load: Any) -> Any:
    """``answer(config, row)`` that calls ``load()`` (which loads the models and returns the real
    answerer) only when something is missing, and only once even when answers run in several threads."""
    answerer: list[Any] = []
    lock = threading.Lock()

    def answer(config: str, row: dict[str, Any], **context: Any) -> dict[str, Any]:
        with lock:
            if not answerer:
                answerer.append(load())
        return answerer[0](config, row, **context)

    return answer


# -- generation with real members ---------------------------------------------------------------------


def record_from_result(result: Any, seconds: float) -> dict[str, Any]:
    """The cached record of one answer: text, cost counters and a compact per-round trace."""
    rounds = []
    for e in result.trace:
        rounds.append({
            "winners": list(e.winners),
            "consensus": e.consensus,
            "candidates": len(e.candidates),
            "active": list(e.active),
            "calls": sum(1 for c in e.calls if c.kind in ("draft", "score")),
            "drafts": sum(1 for c in e.calls if c.kind == "draft"),
            "scores": [list(r) for r in e.scores],
            "scorers": list(e.scorers),
            "totals": list(e.totals),
            "weights": dict(e.weights),
            "candidate_drafters": [list(c.drafters) for c in e.candidates],
            "candidate_texts": [c.text for c in e.candidates],
            "candidate_chars": [len(c.text) for c in e.candidates],
            "candidate_ends": [c.ends for c in e.candidates],
            "chars": len(e.text),
        })  # fmt: skip
    return {
        "response": result.text,
        "finish_reason": result.finish_reason,
        "output_tokens": result.output_tokens,
        "rounds": result.rounds,
        "calls": sum(r["calls"] for r in rounds),
        "seconds": round(seconds, 3),
        "members": list(result.members),
        "exits": [{"round": x.round, "member": x.member, "reason": x.reason} for x in result.exits],
        "trace": rounds,
    }


def make_answerer(member_specs: Sequence[str], args: argparse.Namespace) -> Any:
    """Load the members once; return ``answer(config, row)`` generating with the right ensemble."""
    from specfuse_core import Ensemble, FusionConfig
    from specfuse_core.registry import load_member

    options = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    members = [load_member(spec, **options) for spec in member_specs]
    by_label = {member_label(s): m for s, m in zip(member_specs, members)}
    base = FusionConfig(temperature=0, max_tokens=args.max_tokens, segment_tokens=args.segment_tokens)
    overrides = parse_fusion_overrides(args.fusion or [])

    def answer(config: str, row: dict[str, Any], earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """``earlier``: this configuration's answers to the prompts before (for ``keep_exits``)."""
        if config in by_label:
            ensemble = Ensemble([by_label[config]], base)
        else:
            ensemble = Ensemble(members, base.replace(**{**FUSION_CONFIGS[config], **overrides}))
            if keeps_exits(config):
                ensemble.exit_evidence = exit_evidence_from_records(earlier)
        messages = [{"role": "user", "content": row["prompt"]}]
        start = time.perf_counter()
        result = ensemble.generate(messages)
        return record_from_result(result, time.perf_counter() - start)

    return answer


# -- aggregation ----------------------------------------------------------------------------------


def summarize(
    config: str, records: Sequence[dict[str, Any]], scores: Sequence[dict[str, Any]], member_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy and cost of one configuration over its answered prompts."""
    n = len(records)
    instructions = sum(len(s["strict"]) for s in scores)
    rounds = sum(r["rounds"] for r in records)
    calls = sum(r["calls"] for r in records)
    verified = [t for r in records for t in r.get("trace", []) if not t["consensus"]]
    all_rounds = [t for r in records for t in r.get("trace", [])]
    win_share = {m: 0.0 for m in member_names}
    for t in verified:
        for w in t["winners"]:
            win_share[w] = win_share.get(w, 0.0) + 1.0 / len(verified)
    exits: dict[str, int] = {}
    for r in records:
        for x in r.get("exits", []):
            exits[x["member"]] = exits.get(x["member"], 0) + 1

    def frac(a: float, b: float) -> float:
        return round(a / b, 4) if b else 0.0

    from . import paired

    prompt_ci = paired.wilson_interval(sum(bool(s["binary_loose"]) for s in scores), n)
    followed, given = [sum(s["loose"]) for s in scores], [len(s["loose"]) for s in scores]
    instruction_ci = paired.instruction_accuracy_interval(followed, given, resamples=2000)
    return {
        "config": config,
        "n": n,
        "prompt_loose_ci": [round(x, 4) for x in prompt_ci],
        "instruction_loose_ci": [round(x, 4) for x in instruction_ci],
        "prompt_strict": frac(sum(s["binary_strict"] for s in scores), n),
        "prompt_loose": frac(sum(s["binary_loose"] for s in scores), n),
        "instruction_strict": frac(sum(sum(s["strict"]) for s in scores), instructions),
        "instruction_loose": frac(sum(sum(s["loose"]) for s in scores), instructions),
        "calls_per_round": frac(calls, rounds),
        "rounds_per_answer": frac(rounds, n),
        "consensus_share": frac(len(all_rounds) - len(verified), len(all_rounds)),
        "win_share": {m: round(v, 4) for m, v in win_share.items()},
        "exits": exits,
        "wall_s": round(sum(r["seconds"] for r in records), 1),
        "s_per_answer": frac(sum(r["seconds"] for r in records), n),
        "tokens_per_answer": frac(sum(r.get("output_tokens", 0) for r in records), n),
        "length_finishes": sum(1 for r in records if r.get("finish_reason") == "length"),
    }


def diagnostics(
    records: Sequence[dict[str, Any]], member_names: Sequence[str], config: Any = None
) -> dict[str, Any]:
    """Why a fusion configuration (``config``, a :class:`~specfuse_core.FusionConfig`; default: the
    defaults) wins or loses, from the stored per-round traces (contested rounds only).

    - ``win_share_by_phase``: winner shares in rounds 1-3 vs later rounds;
    - ``self_preference[j]``: how often scorer j's highest raw score went to its own draft;
    - ``scorer_agreement``: how often all scorers ranked the same candidate first;
    - ``decided_by[j]``: how often the winner was scorer j's own first choice;
    - ``mean_raw_score[j][k]``: scorer j's mean raw score (mean token probability) of k's drafts;
    - ``flip_if_exclude_self``: share of rounds whose winner would change (that round only) if a
      scorer did not vote on its own draft, decided by the engine's own rule (:func:`replay_rounds`;
      with two single-drafter candidates the totals always tie, so the tie-break decides); ``None``
      when no round can be replayed (a coin tie-break on answers cached without candidate texts);
    - ``final_quality_gap[kind]``: median over answers of the gap between the members' cumulative
      quality ``Q`` at the end of the answer, with ``Q`` counting rounds won (``wins``, the default
      ``exit_quality``) or summing aggregated scores (``scores``, ``docs/algorithm.md`` §4's wording);
    - ``min_exit_entropy[kind]``: median over answers of the lowest normalised entropy of
      ``softmax(Q)`` (exit temperature 1) reached while both members were active; model exit needs it
      below ``exit_entropy`` (0.6 by default).
    """
    from specfuse_core import FusionConfig, policies

    phases: dict[str, dict[str, float]] = {"rounds 1-3": {}, "rounds 4+": {}}
    counts = {"rounds 1-3": 0, "rounds 4+": 0}
    self_pref = {m: [0, 0] for m in member_names}
    decided = {m: 0 for m in member_names}
    raw: dict[str, dict[str, list[float]]] = {j: {k: [] for k in member_names} for j in member_names}
    agree = flips = contested = replayed = 0
    excluding = (config or FusionConfig()).replace(exclude_self_scores=True)
    kinds = ("wins", "scores")
    gaps: dict[str, list[float]] = {kind: [] for kind in kinds}
    min_entropy: dict[str, list[float]] = {kind: [] for kind in kinds}
    for record in records:
        for index, _, winner in replay_rounds(record, excluding, member_names):
            t = record["trace"][index]
            replayed += 1
            flips += t["candidate_drafters"][winner] != t["winners"]
        quality = {kind: {m: 0.0 for m in member_names} for kind in kinds}
        lowest, verified = dict.fromkeys(kinds, 1.0), 0
        for t in record.get("trace", []):
            if t.get("consensus", True) or not t.get("totals") or len(t.get("active", member_names)) < 2:
                continue
            verified += 1
            winner = t["candidate_drafters"].index(t["winners"]) if t["winners"] in t["candidate_drafters"] else -1
            for kind in kinds:
                credits = policies.round_quality(t["totals"], winner, kind)
                for d, credit in zip(t["candidate_drafters"], credits):
                    for k in d:
                        quality[kind][k] = quality[kind].get(k, 0.0) + credit
                entropy = policies.normalized_entropy(policies.softmax(list(quality[kind].values())))
                lowest[kind] = min(lowest[kind], entropy)
        if verified:
            for kind in kinds:
                gaps[kind].append(max(quality[kind].values()) - min(quality[kind].values()))
                min_entropy[kind].append(lowest[kind])
        for index, t in enumerate(record.get("trace", []), start=1):
            if t.get("consensus", True) or not t.get("scores"):
                continue
            contested += 1
            phase = "rounds 1-3" if index <= 3 else "rounds 4+"
            counts[phase] += 1
            for w in t["winners"]:
                phases[phase][w] = phases[phase].get(w, 0) + 1
            drafters, scorers, matrix = t["candidate_drafters"], t["scorers"], t["scores"]
            tops = []
            for j, row in zip(scorers, matrix):
                top = max(range(len(row)), key=lambda i: row[i])
                tops.append(top)
                if j in self_pref and any(j in d for d in drafters):
                    self_pref[j][1] += 1
                    self_pref[j][0] += j in drafters[top]
                if drafters[top] == t["winners"] and j in decided:
                    decided[j] += 1
                for i, d in enumerate(drafters):
                    for k in d:
                        if j in raw and k in raw[j]:
                            raw[j][k].append(row[i])
            agree += len(set(tops)) == 1

    def share(a: float, b: float) -> float:
        return round(a / b, 4) if b else 0.0

    return {
        "contested_rounds": contested,
        "win_share_by_phase": {p: {m: share(phases[p].get(m, 0), counts[p]) for m in member_names} for p in phases},
        "rounds_by_phase": counts,
        "self_preference": {m: share(a, b) for m, (a, b) in self_pref.items()},
        "scorer_agreement": share(agree, contested),
        "decided_by": {m: share(v, contested) for m, v in decided.items()},
        "mean_raw_score": {j: {k: round(sum(v) / len(v), 4) if v else None for k, v in row.items()}
                           for j, row in raw.items()},  # fmt: skip
        "flip_if_exclude_self": share(flips, replayed) if replayed else None,
        "final_quality_gap": {k: round(statistics.median(v), 3) if v else None for k, v in gaps.items()},
        "min_exit_entropy": {k: round(statistics.median(v), 3) if v else None for k, v in min_entropy.items()},
        "length_bias": length_bias(records),
        "split_votes": split_votes(records, member_names),
        "lead_exit_estimate": [simulate_lead_exit(records, z) for z in (1.0, 1.645)],
    }


def replay_rounds(
    record: dict[str, Any], config: Any, member_names: Sequence[str]
) -> list[tuple[int, list[float], int]]:
    """Each contested round of ``record`` decided again under ``config`` (a
    :class:`~specfuse_core.FusionConfig`) by the engine's own rule,
    :func:`specfuse_core.scoring.round_winner`: ``(index in the trace, totals, winner)``.

    Calibrated margins are replayed within the answer, as the engine keeps them per request; the
    weights are the ones the trace recorded (uniform in answers cached before traces kept them). An
    answer cannot be replayed (empty) when the tie-break is ``coin`` and the trace has no candidate
    texts (answers cached before traces kept them)."""
    from specfuse_core import scoring

    names = list(record.get("members") or member_names)
    order = {name: i for i, name in enumerate(names)}
    margins: dict[str, Any] = {}
    out = []
    for index, t in enumerate(record.get("trace", [])):
        if t.get("consensus", True) or not t.get("scores"):
            continue
        drafters, scorers, matrix = t["candidate_drafters"], t["scorers"], t["scores"]
        for name in (n for d in drafters for n in d):
            order.setdefault(name, len(order))
        texts, chars = t.get("candidate_texts"), t.get("candidate_chars")
        if (config.effective_tie_break == "coin" and texts is None) or (config.score_span == "leading" and not chars):
            return []
        ends = t.get("candidate_ends") or [False] * len(chars or [])
        lengths = None if chars is None else [n + bool(e) for n, e in zip(chars, ends)]
        typical = None
        if config.normalize == "calibrated":
            for name, row in zip(scorers, scoring.voting_scores(matrix, scorers, drafters, config.exclude_self_scores)):
                margins[name] = scoring.update_margin_scale(margins.get(name, scoring.MarginScale()), row)
            typical = [margins[name].value for name in scorers]
        recorded = t.get("weights")
        weights = [recorded.get(name, 0.0) for name in scorers] if recorded else [1.0] * len(scorers)
        totals, winner = scoring.round_winner(matrix, scorers, drafters, weights, order, config, texts=texts,
                                              lengths=lengths, typical_margins=typical)  # fmt: skip
        out.append((index, totals, winner))
    return out


LENGTH_RATIO_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def length_bias(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Do short candidates win contested rounds more often than long ones?

    Every contested round gives one pair (winner, other) per other candidate of a different length, in
    characters (``candidate_chars`` of the trace).

    - ``pairs``: how many such pairs;
    - ``shorter_wins``: share of pairs the shorter candidate won (0.5 would be no preference; with two
      candidates a round is one pair, so this is the share of rounds won by the shorter candidate);
    - ``by_ratio``: the same per bin of the length ratio shorter / longer, ``[low, high)``: pairs and
      the shorter candidate's win share (a mean score favours short candidates most when the ratio is low);
    - ``mean_chars``: mean length of winning and of losing candidates.
    """
    pairs = shorter = 0
    bins = [[0, 0] for _ in LENGTH_RATIO_BINS]
    won_chars: list[int] = []
    lost_chars: list[int] = []
    for record in records:
        for t in record.get("trace", []):
            lengths = t.get("candidate_chars")
            if t.get("consensus", True) or not lengths or t["winners"] not in t["candidate_drafters"]:
                continue
            winner = t["candidate_drafters"].index(t["winners"])
            won_chars.append(lengths[winner])
            for k, length in enumerate(lengths):
                if k == winner:
                    continue
                lost_chars.append(length)
                if length == lengths[winner]:
                    continue
                pairs += 1
                short_won = lengths[winner] < length
                shorter += short_won
                ratio = min(length, lengths[winner]) / max(length, lengths[winner])
                for b, (low, high) in enumerate(LENGTH_RATIO_BINS):
                    if low <= ratio < high or (high == 1.0 and ratio == 1.0):
                        bins[b][0] += 1
                        bins[b][1] += short_won
                        break

    def share(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "pairs": pairs,
        "shorter_wins": share(shorter, pairs),
        "by_ratio": {f"{low:.2f}-{high:.2f}": {"pairs": n, "shorter_wins": share(k, n)}
                     for (low, high), (n, k) in zip(LENGTH_RATIO_BINS, bins)},  # fmt: skip
        "mean_chars": {"won": share(sum(won_chars), len(won_chars)), "lost": share(sum(lost_chars), len(lost_chars))},
    }


def split_votes(records: Sequence[dict[str, Any]], member_names: Sequence[str]) -> dict[str, Any]:
    """Who wins the rounds in which every scorer votes for its own draft.

    The case a fair vote is designed for: each candidate has one drafter, every scorer drafted one of
    them, and each scorer's highest raw score goes to its own draft. Raw scores cannot settle such a
    round; the normalisation does. A member that wins most of them casts the louder vote (its scores
    are sharper, or its self-preference wider); a fair normalisation splits them evenly between equally
    good members. Rounds in which the scorers agree are left out: there the vote is not in question.

    - ``rounds``: how many such rounds;
    - ``win_share[m]``: the share of them member m won.
    """
    wins = {m: 0 for m in member_names}
    rounds = 0
    for record in records:
        for t in record.get("trace", []):
            drafters, scorers = t.get("candidate_drafters", []), t.get("scorers", [])
            if t.get("consensus", True) or not t.get("scores") or any(len(d) != 1 for d in drafters):
                continue
            own = [d[0] for d in drafters]
            if len(own) < 2 or sorted(scorers) != sorted(own):
                continue
            tops = [own[max(range(len(row)), key=lambda i: row[i])] for row in t["scores"]]
            if tops != list(scorers):
                continue
            rounds += 1
            for w in t["winners"]:
                wins[w] = wins.get(w, 0) + 1
    return {"rounds": rounds, "win_share": {m: round(k / rounds, 4) if rounds else None for m, k in wins.items()}}


def simulate_lead_exit(records: Sequence[dict[str, Any]], z: float, min_rounds: int = 3) -> dict[str, Any]:
    """What ``exit_rule="lead"`` would have cost on answers generated without exit (an estimate).

    Replays each answer's contested rounds: the first verified round ``t ≥ min_rounds`` at which the
    leader's wins exceed another member's by ``z · sqrt(t)`` is where that member would have exited.
    The estimate keeps the rounds up to there and charges every later round one call (the last member
    drafting alone), so it assumes the answer would have had the same number of rounds.

    - ``fired``: share of answers in which the rule fires (two-member answers only);
    - ``calls_ratio``: estimated member calls with exit / calls without exit;
    - ``median_round``: median round index at which it fires;
    - ``exited_later_wins``: of the contested rounds after the exit, the share the exited member's
      draft won in the answer without exit (how often the lead it lost on did not last).
    """
    from specfuse_core import policies

    simulated = actual = fired = answers = later = later_won = 0
    rounds_fired: list[int] = []
    for record in records:
        trace = record.get("trace", [])
        members = sorted({m for t in trace for d in t.get("candidate_drafters", []) for m in d})
        if len(members) != 2 or not trace:
            continue
        answers += 1
        wins = dict.fromkeys(members, 0.0)
        verified, exit_at, exited = 0, None, ""
        for index, t in enumerate(trace):
            if t.get("consensus", True) or t["winners"] not in t.get("candidate_drafters", []):
                continue
            verified += 1
            for m in t["winners"]:
                wins[m] = wins.get(m, 0.0) + 1
            decision = policies.decide_exits_by_lead([wins[m] for m in members], verified, min_rounds=min_rounds, z=z)
            if decision.exiting:
                exit_at, exited = index, members[decision.exiting[0]]
                break
        calls = [t.get("calls", 0) for t in trace]
        actual += sum(calls)
        if exit_at is None:
            simulated += sum(calls)
        else:
            fired += 1
            rounds_fired.append(exit_at + 1)
            simulated += sum(calls[: exit_at + 1]) + (len(trace) - exit_at - 1)
            for t in trace[exit_at + 1:]:
                if not t.get("consensus", True) and t["winners"] in t.get("candidate_drafters", []):
                    later += 1
                    later_won += exited in t["winners"]
    return {
        "z": z,
        "answers": answers,
        "fired": round(fired / answers, 4) if answers else None,
        "calls_ratio": round(simulated / actual, 4) if actual else None,
        "median_round": statistics.median(rounds_fired) if rounds_fired else None,
        "exited_later_wins": round(later_won / later, 4) if later else None,
    }


def length_bias_markdown(diag: dict[str, dict[str, Any]]) -> str:
    lines = ["## Length bias (contested rounds)", "",
             "Pairs (winner, other candidate) of different lengths in characters. Shorter wins: share of pairs "
             "won by the shorter candidate (50% = no preference). By ratio: the shorter candidate's win share "
             "(pairs) per bin of length ratio shorter / longer.", "",
             "| configuration | pairs | shorter wins | " + " | ".join(f"ratio {b[0]:.2f}-{b[1]:.2f}"
                                                                    for b in LENGTH_RATIO_BINS)
             + " | mean chars won / lost |",
             "|---|---|---|" + "---|" * len(LENGTH_RATIO_BINS) + "---|"]  # fmt: skip
    for config, d in diag.items():
        bias = d.get("length_bias")
        if not bias:
            continue

        def pct(x: float | None) -> str:
            return "–" if x is None else f"{_pct(x)}%"

        cells = " | ".join(f"{pct(v['shorter_wins'])} ({v['pairs']})" for v in bias["by_ratio"].values())
        chars = bias["mean_chars"]
        lines.append(f"| {config} | {bias['pairs']} | {pct(bias['shorter_wins'])} | {cells} | "
                     f"{chars['won']} / {chars['lost']} |")  # fmt: skip
    estimates = {c: d["lead_exit_estimate"] for c, d in diag.items() if d.get("lead_exit_estimate")}
    if estimates:
        lines += ["", "## Exit on a significant lead, replayed on these answers (estimate)", "",
                  "Where `exit_rule=lead` would have fired (lead ≥ z·sqrt(t) after t ≥ 3 verified rounds) and the "
                  "member calls it would have saved, counting one call per round after the exit. Exited member's "
                  "later wins: of the contested rounds after that point, the share its draft won without exit.", "",
                  "| configuration | z | answers | fired | median round | calls ratio | exited member's later wins |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for config, rows in estimates.items():
            for e in rows:
                fired = "–" if e["fired"] is None else f"{_pct(e['fired'])}%"
                later = "–" if e.get("exited_later_wins") is None else f"{_pct(e['exited_later_wins'])}%"
                lines.append(f"| {config} | {e['z']} | {e['answers']} | {fired} | {e['median_round']} | "
                             f"{e['calls_ratio']} | {later} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def per_prompt_comparison(
    scores_by_config: dict[str, list[dict[str, Any]]], fused: str, members: Sequence[str]
) -> dict[str, Any]:
    """Prompt-level loose: how often ``fused`` is right where each member is wrong, and vice versa."""
    out: dict[str, Any] = {}
    if fused not in scores_by_config:
        return out
    for m in members:
        if m not in scores_by_config:
            continue
        pairs = list(zip(scores_by_config[fused], scores_by_config[m]))
        out[m] = {"fused_only": sum(f["binary_loose"] and not s["binary_loose"] for f, s in pairs),
                  "member_only": sum(s["binary_loose"] and not f["binary_loose"] for f, s in pairs),
                  "both": sum(f["binary_loose"] and s["binary_loose"] for f, s in pairs)}  # fmt: skip
    return out


def diagnostics_markdown(diag: dict[str, dict[str, Any]], comparison: dict[str, dict[str, Any]]) -> str:
    lines = ["## Diagnostics (contested rounds)", "",
             "Raw score = mean token probability a scorer gives a draft. Self-preference = share of rounds in "
             "which a scorer's top raw score went to its own draft. Decided by = share of rounds won by that "
             "scorer's first choice. Flip if exclude-self = rounds whose winner would change, that round only, "
             "if scorers did not vote on their own drafts. Q gap = difference of the members' cumulative "
             "quality at the end of an answer, counted in rounds won (wins, the default exit_quality) or "
             "as summed aggregated scores (scores); model exit fires only once the normalised entropy of "
             "softmax(Q) drops below exit_entropy (0.6). Own-draft splits = rounds in which every scorer's top "
             "raw score went to its own draft (the normalisation decides them; a fair vote splits them evenly "
             "between equally good members), and who won them.", "",
             "| configuration | contested | win share rounds 1-3 | win share rounds 4+ | self-preference | "
             "scorers agree | decided by | own-draft splits won | mean raw score (scorer → drafter) | "
             "flip if exclude-self | final Q gap (median) | min exit entropy (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}: {_pct(v)}%" for k, v in d.items())

    for config, d in diag.items():
        phases = d["win_share_by_phase"]
        split = d["split_votes"]
        splits = f"{fmt(split['win_share'])} ({split['rounds']})" if split["rounds"] else "–"
        raw = "; ".join(f"{j} → " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None)
                        for j, row in d["mean_raw_score"].items())  # fmt: skip
        lines.append(
            f"| {config} | {d['contested_rounds']} | {fmt(phases['rounds 1-3'])} | {fmt(phases['rounds 4+'])} | "
            f"{fmt(d['self_preference'])} | {_pct(d['scorer_agreement'])}% | {fmt(d['decided_by'])} | {splits} | {raw} | "
            f"{_share(d['flip_if_exclude_self'])} | {_by_kind(d['final_quality_gap'])} | "
            f"{_by_kind(d['min_exit_entropy'])} |"
        )
    if comparison:
        lines += ["", "Per prompt (prompt-level loose): prompts only the fused configuration follows / only the "
                  "member follows / both follow.", "",
                  "| configuration | vs member | fused only | member only | both |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for config, by_member in comparison.items():
            for m, c in by_member.items():
                lines.append(f"| {config} | {m} | {c['fused_only']} | {c['member_only']} | {c['both']} |")
    lines.append("")
    return "\n".join(lines)


def _by_kind(values: dict[str, float | None]) -> str:
    return " / ".join(f"{k} {v}" for k, v in values.items())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{_pct(x)}%"


def markdown_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# IFEval quality benchmark",
        "",
        f"N = {meta['n']} prompts of `{meta['data']}` (the first N lines), members: "
        + ", ".join(f"`{m}`" for m in meta["members"])
        + f"; greedy, max_tokens {meta['max_tokens']}, segment_tokens {meta['segment_tokens']}, device "
        f"`{meta['device']}`."
        + ("".join(f" Fusion override: `{k}={v}`." for k, v in meta.get("fusion_overrides", {}).items())),
        "",
        "Accuracy in % (IFEval, Zhou et al. 2023, arXiv 2311.07911; rule-based, offline scoring). "
        "Calls per round = draft + scoring calls / rounds. Win share = share of contested (non-consensus) "
        "rounds whose winning segment each member drafted. Wall = summed generation time over the N answers.",
        "",
        "| configuration | N | prompt strict | prompt loose | instr. strict | instr. loose | calls/round | "
        "rounds/answer | consensus rounds | win share (contested) | exits | tokens/answer | wall s (s/answer) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wins = ", ".join(f"{m}: {_pct(v)}%" for m, v in r["win_share"].items()) if r["consensus_share"] < 1 else "–"
        exits = ", ".join(f"{m}: {k}/{r['n']}" for m, k in r["exits"].items()) or "–"
        lines.append(
            f"| {r['config']} | {r['n']} | {_pct(r['prompt_strict'])} | {_pct(r['prompt_loose'])} | "
            f"{_pct(r['instruction_strict'])} | {_pct(r['instruction_loose'])} | {r['calls_per_round']:.2f} | "
            f"{r['rounds_per_answer']:.1f} | {_pct(r['consensus_share'])}% | {wins} | {exits} | "
            f"{r['tokens_per_answer']:.0f} | {r['wall_s']:.0f} ({r['s_per_answer']:.1f}) |"
        )
    lines.append("")
    return "\n".join(lines)


def label_groups(
    points: Sequence[tuple[float, float, str]], x_tolerance: float, y_tolerance: float
) -> list[tuple[float, float, list[str]]]:
    """Points closer than the tolerances on both axes share one label, anchored at the first of them."""
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, name in points:
        for gx, gy, names in groups:
            if abs(x - gx) < x_tolerance and abs(y - gy) < y_tolerance:
                names.append(name)
                break
        else:
            groups.append((x, y, [name]))
    return groups


def _shift_overlapping_labels(
    fig: Any, labels: Sequence[Any], markers: Sequence[tuple[Any, float, float]], step_points: float = 11.0
) -> None:
    """Move each label down, in steps, until its box overlaps no marker and no earlier label."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    half = 7 * fig.dpi / 72
    placed: list[Any] = []
    for ax, x, y in markers:
        px, py = ax.transData.transform((x, y))
        placed.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    for label in labels:
        for _ in range(12):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x_offset, y_offset = label.xyann
            label.xyann = (x_offset, y_offset - step_points)
        placed.append(label.get_window_extent(renderer))


def plot(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    """Accuracy (%) against member calls per round: prompt level (left) and instruction level (right).

    One colour per configuration; filled markers loose (with 95% intervals: Wilson at prompt level, a
    bootstrap over prompts at instruction level), open markers strict. Configurations that land on the
    same point share one label, so none hides another.
    """
    require("matplotlib", "The accuracy-vs-cost figure")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120, sharey=True)
    xs = [r["calls_per_round"] for r in rows] or [1.0]
    ys = [100 * r[m] for r in rows for m in ("prompt_loose", "prompt_strict", "instruction_loose",
                                              "instruction_strict")] or [0.0]  # fmt: skip
    ys += [100 * r[f"{level}_loose_ci"][1] for r in rows for level in ("prompt", "instruction")
           if r.get(f"{level}_loose_ci")]  # fmt: skip
    labels, markers = [], []
    for ax, level in zip(axes, ("prompt", "instruction")):
        for i, r in enumerate(rows):
            color = colors[i % len(colors)]
            ax.scatter(r["calls_per_round"], 100 * r[f"{level}_loose"], marker="o", s=90, color=color, zorder=3,
                       alpha=0.85)  # fmt: skip
            interval = r.get(f"{level}_loose_ci")
            if interval:  # 95%: Wilson (prompt level), bootstrap over prompts (instruction level)
                y = 100 * r[f"{level}_loose"]
                ax.errorbar(r["calls_per_round"], y, yerr=[[y - 100 * interval[0]], [100 * interval[1] - y]],
                            color=color, alpha=0.6, capsize=4, linewidth=1.2, zorder=2)  # fmt: skip
            ax.scatter(r["calls_per_round"], 100 * r[f"{level}_strict"], marker="s", s=90, facecolors="none",
                       edgecolors=color, linewidths=1.6, zorder=3)  # fmt: skip
        xlim = (min(0.5, min(xs) - 0.3), max(xs) + 1.2)
        ylim = (-4.0, min(105.0, max(ys) + 12) if max(ys) > 0 else 10.0)
        points = [(r["calls_per_round"], 100 * r[f"{level}_loose"], r["config"]) for r in rows]
        markers += [(ax, r["calls_per_round"], 100 * r[f"{level}_{kind}"]) for r in rows for kind in ("loose", "strict")]
        for x, y, names in label_groups(points, 0.06 * (xlim[1] - xlim[0]), 0.05 * (ylim[1] - ylim[0])):
            labels.append(ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(10, 0),
                                      fontsize=8.5, color="#222222", va="center"))  # fmt: skip
        ax.set_title(f"{level}-level accuracy", fontsize=11)
        ax.set_xlabel("member calls per round (drafts + scoring passes)")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("IFEval accuracy (%)")
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[i % len(colors)], markersize=8, label=r["config"])
               for i, r in enumerate(rows)]  # fmt: skip
    handles += [Line2D([], [], marker="o", linestyle="", color="#444444", markersize=8, label="loose (filled)"),
                Line2D([], [], marker="s", linestyle="", markerfacecolor="none", markeredgecolor="#444444",
                       markersize=8, label="strict (open)")]  # fmt: skip
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.suptitle(f"IFEval dev: accuracy vs cost, N = {meta['n']} prompts, greedy decoding, "
                 f"max {meta['max_tokens']} tokens; bars: 95% intervals (loose)", fontsize=12)  # fmt: skip
    fig.tight_layout()
    _shift_overlapping_labels(fig, labels, markers)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------------


def build_parser(add_help: bool = True, prog: str = "python -m specfuse_eval.quality") -> argparse.ArgumentParser:
    """The harness's options (also those of ``specfuse eval``, which takes this parser as a parent)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--data", metavar="PATH", help=(
        "IFEval prompts: a JSONL file of {key, prompt, instruction_id_list, kwargs} rows (default "
        f"{DEFAULT_DATA} from the current directory, if it exists)"))  # fmt: skip
    p.add_argument("--configs", action="append", metavar="LIST", help=(
        "comma-separated, repeatable: 'members' (each member alone), a member's name, 'all' (default: members, "
        "specfuse, specfuse+exit, specfuse+weights, specfuse+exit+weights) or any of "
        + ", ".join(FUSION_CONFIGS)))  # fmt: skip
    p.add_argument("--member", action="append", metavar="SPEC",
                   help="member spec, repeatable (default: the default ensemble)")  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=256,
                   help="answer budget in the first member's tokens (default 256)")  # fmt: skip
    p.add_argument("--segment-tokens", type=int, default=10, help="tokens per drafted segment (default 10)")
    p.add_argument("--fusion", action="append", metavar="KEY=VALUE", help=(
        "a FusionConfig option for every fused configuration, repeatable (e.g. score_mode=mean_logprob, "
        "exclude_self_scores=true); results go to their own directories and files"))  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--concurrency", type=int, default=1, help=(
        "answer this many (prompt, configuration) pairs at once: concurrent requests share batched forward "
        "passes (greedy answers are the same; per-answer seconds are then under load)"))  # fmt: skip
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help=f"results directory, created if missing (default {DEFAULT_RESULTS})")  # fmt: skip
    p.add_argument("--device", help="device for the members (cpu, cuda, ...)")
    p.add_argument("--dtype", help="dtype for the members")
    p.add_argument("--score-only", action="store_true", help="do not generate: score the cached answers only")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m specfuse_eval.quality") -> int:
    """Parse ``argv`` and :func:`run`."""
    return run(build_parser(prog=prog).parse_args(argv))


def answer_dtype(args: argparse.Namespace) -> str:
    """The dtype local members compute in: ``--dtype``, else what ``dtype="auto"`` picks for ``--device``."""
    from specfuse_core.numerics import default_device, parse_dtype

    return str(parse_dtype(args.dtype, args.device or default_device())).removeprefix("torch.")


def cache_dirnames(
    configs: Sequence[str],
    member_specs: Sequence[str],
    overrides: dict[str, Any],
    max_tokens: int,
    segment_tokens: int,
    dtype: str = "float32",
) -> dict[str, str]:
    """Each configuration's directory under the results root. A member alone answers the same whatever
    the other members are, so its answers live under a run id of that member only and are shared by
    every ensemble it is part of; fused configurations live under the ensemble's run id."""
    by_label = {member_label(spec): spec for spec in member_specs}
    ensemble_run = run_id(member_specs, max_tokens, segment_tokens, dtype)
    return {
        c: (f"{run_id([by_label[c]], max_tokens, segment_tokens, dtype)}/{c}" if c in by_label
            else f"{ensemble_run}/{cache_dirname(c, overrides)}")
        for c in configs
    }  # fmt: skip


def run(args: argparse.Namespace, *, paired_to_stdout: bool = False) -> int:
    """Answer, score and report (``specfuse eval``, ``python -m specfuse_eval.quality``).

    ``args``: the options of :func:`build_parser`. ``paired_to_stdout``: print the paired comparison
    against the best member on standard output (what ``specfuse eval`` shows), besides the full report
    on standard error. A missing data file or a missing dependency of the ``eval`` extra is reported on
    standard error, with exit status 2, before any model loads."""
    try:
        return _run(args, paired_to_stdout=paired_to_stdout)
    except (DataNotFoundError, MissingDependencyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, *, paired_to_stdout: bool) -> int:
    from specfuse_core.engine import DEFAULT_MEMBERS

    member_specs = list(args.member or DEFAULT_MEMBERS)
    configs = expand_configs(args.configs, member_specs)
    prompts = load_prompts(args.data, args.limit)
    from . import ifeval

    ifeval.require_scoring()  # fail before any model loads if the eval extra is missing
    require("matplotlib", "The accuracy-vs-cost figure")
    dtype = answer_dtype(args)
    run_dir = resolve(args.results) / run_id(member_specs, args.max_tokens, args.segment_tokens, dtype)
    overrides = parse_fusion_overrides(args.fusion or [])
    cache = ResponseCache(
        resolve(args.results),
        cache_dirnames(configs, member_specs, overrides, args.max_tokens, args.segment_tokens, dtype),
    )
    suffix = "".join(f"-{k}={v}" for k, v in sorted(overrides.items())).replace("/", "_")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    if args.score_only:
        records = {c: [r for r in (cache.get(c, row["key"]) for row in prompts) if r is not None] for c in configs}
        answered = set.intersection(*({r["key"] for r in recs} for recs in records.values())) if records else set()
        records = {c: [r for r in recs if r["key"] in answered] for c, recs in records.items()}
    else:
        lazy_answer = loaded_on_first_use(lambda: make_answerer(member_specs, args))
        records = run_all(prompts, configs, cache, lazy_answer, log=log, concurrency=args.concurrency)

    by_key = {row["key"]: row for row in prompts}
    member_names = [member_label(s) for s in member_specs]
    scores_by_config = {c: [ifeval.score_response(by_key[r["key"]], r["response"]) for r in records[c]]
                        for c in configs}  # fmt: skip
    rows = []
    for config in configs:
        names = records[config][0].get("members", member_names) if records[config] else member_names
        rows.append(summarize(config, records[config], scores_by_config[config], names))
    fused_configs = [c for c in configs if c in FUSION_CONFIGS]
    alone = [c for c in configs if c not in FUSION_CONFIGS]
    diag = {c: diagnostics(records[c], member_names, fusion_config(c, overrides)) for c in fused_configs}
    comparison = {c: per_prompt_comparison(scores_by_config, c, alone) for c in fused_configs}
    keys_by_config = {c: [r["key"] for r in records[c]] for c in configs}
    paired_results = paired_against_best(rows, keys_by_config, scores_by_config)
    n = min((r["n"] for r in rows), default=0)
    meta = {"n": n, "data": args.data or DEFAULT_DATA, "members": member_specs, "max_tokens": args.max_tokens,
            "segment_tokens": args.segment_tokens, "device": args.device or "auto (cpu here)", "dtype": dtype,
            "run_dir": str(run_dir), "fusion_overrides": overrides}  # fmt: skip
    (run_dir).mkdir(parents=True, exist_ok=True)
    paired_report = paired_markdown(paired_results)
    report = markdown_table(rows, meta) + ("\n" + paired_report if paired_results else "")
    report += "\n" + diagnostics_markdown(diag, comparison) + "\n" + length_bias_markdown(diag) if diag else ""
    report_path, plot_path = run_dir / f"results{suffix}.md", run_dir / f"quality{suffix}.png"
    report_path.write_text(report, encoding="utf-8")
    plot(rows, meta, plot_path)
    if log:
        log(report)
        log(f"wrote {report_path} and {plot_path}")
    if paired_to_stdout and not args.json:
        print(paired_report if paired_results else "No paired comparison: run at least one member alone and one "
              "other configuration (e.g. --configs members,specfuse).")  # fmt: skip
    if args.json:
        print(json.dumps({**meta, "configs": rows, "diagnostics": diag, "per_prompt": comparison,
                          "paired": [c.to_dict() for c in paired_results]}))  # fmt: skip
    return 0


# -- paired comparison against the best member --------------------------------------------------------


def paired_against_best(
    rows: Sequence[dict[str, Any]],
    keys_by_config: dict[str, list[Any]],
    scores_by_config: dict[str, list[dict[str, Any]]],
) -> list[Any]:
    """Every configuration against the best member alone (prompt-level loose, then instruction-level
    loose), on the prompts both answered: wins/losses, McNemar's exact p, a bootstrap 95% interval."""
    from . import paired

    members = [r["config"] for r in rows if r["config"] not in FUSION_CONFIGS]
    if not members:
        return []
    by_config = {r["config"]: r for r in rows}
    best = paired.best_reference(members, {m: by_config[m]["prompt_loose"] for m in members},
                                 {m: by_config[m]["instruction_loose"] for m in members})  # fmt: skip
    reference = dict(zip(keys_by_config[best], scores_by_config[best]))
    out = []
    for row in rows:
        config = row["config"]
        if config == best:
            continue
        mine = dict(zip(keys_by_config[config], scores_by_config[config]))
        keys = [k for k in keys_by_config[config] if k in reference]
        if not keys:
            continue
        out.append(paired.compare(
            config, best,
            [mine[k]["binary_loose"] for k in keys], [reference[k]["binary_loose"] for k in keys],
            [sum(mine[k]["loose"]) for k in keys], [sum(reference[k]["loose"]) for k in keys],
            [len(reference[k]["loose"]) for k in keys],
        ))  # fmt: skip
    return out


def paired_markdown(results: Sequence[Any]) -> str:
    """The paired comparison as a table and one sentence per configuration."""
    if not results:
        return ""
    lines = ["## Paired comparison against the best member (loose)", "",
             f"Reference: **{results[0].reference}**, the best member alone. Wins / losses: prompts only the "
             "configuration / only the member follows. p: McNemar's exact two-sided test on those. Instruction Δ: "
             "difference of instruction-level accuracy, with a 95% paired bootstrap interval over prompts "
             "(10,000 resamples). Significant means p < 0.05, or an interval that excludes 0 with at least 10 "
             "prompts.", "",
             "| configuration | N | wins | losses | both | neither | McNemar p | prompt Δ | instruction Δ [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in results:
        low, high = c.instruction_ci
        lines.append(f"| {c.config} | {c.n} | {c.wins} | {c.losses} | {c.both} | {c.neither} | {c.mcnemar_p:.3g} | "
                     f"{100 * c.prompt_difference:+.1f} | {100 * c.instruction_difference:+.1f} "
                     f"[{100 * low:+.1f}, {100 * high:+.1f}] |")  # fmt: skip
    lines.append("")
    lines += [f"- {c.sentence()}" for c in results]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
