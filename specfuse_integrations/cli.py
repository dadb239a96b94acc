"""The ``specfuse`` command: ask the ensemble a question from the terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from specfuse_core.config import (
    EXIT_QUALITIES,
    EXIT_RULES,
    NORMALIZATIONS,
    SCORE_MODES,
    SCORE_SPANS,
    TIE_BREAKS,
    TOOL_VOTES,
    WEIGHT_SCHEDULES,
    FusionConfig,
)
from specfuse_core.errors import SpecFuseError
from specfuse_core.scheduler import SCHEDULES, describe, prefer_passive_openmp
from specfuse_core.trace import FusionResult

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _fusion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--member", action="append", metavar="SPEC", help=(
        "member spec, repeatable: a preset name, a local directory, a Hub id or a .gguf file; "
        "append ::draft or ::score for a single role (default: the default two-model ensemble)"))  # fmt: skip
    parser.add_argument("--segment-tokens", type=int, default=10, help="tokens per drafted segment (default 10)")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer budget in the first member's tokens")
    parser.add_argument("--temperature", type=float, help="draft temperature; 0 is greedy (default 0.6, top-p 0.9)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, help="seed for reproducible sampling")
    parser.add_argument("--stop", action="append", metavar="TEXT", help="stop string, repeatable")
    parser.add_argument("--score-mode", choices=SCORE_MODES, default="mean_prob", help="per-candidate score")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="sum", help=(
        "per-scorer normalisation: sum (paper), softmax, ratio (reference code), calibrated (margins in "
        "each scorer's typical margin), rank (Borda)"))  # fmt: skip
    parser.add_argument("--score-span", choices=SCORE_SPANS, default="full",
                        help="score all tokens (full) or the shortest candidate's leading tokens (leading)")  # fmt: skip
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default=None, help=(
        "who wins tied scores: the most self-confident member (self_score) or a fair coin seeded by the "
        "candidates (coin); default coin with calibrated and rank, else self_score"))  # fmt: skip
    parser.add_argument("--softmax-temperature", type=float, default=1.0, help="temperature of --normalize softmax")
    parser.add_argument("--exclude-self", action="store_true", help="a scorer does not vote for its own draft")
    parser.add_argument("--no-kv-cache", action="store_true", help="re-read the whole context every round (baseline)")
    parser.add_argument("--exit", action="store_true", help="model exit: drop members that keep losing")
    parser.add_argument("--exit-min-rounds", type=int, default=3, help="verified rounds before an exit (default 3)")
    parser.add_argument("--exit-temperature", type=float, default=1.0, help="softmax temperature over Q (default 1)")
    parser.add_argument("--exit-entropy", type=float, default=0.6, help="exit fires below this normalised entropy")
    parser.add_argument("--exit-share", type=float, default=0.5, help="a member exits below this share of 1/n")
    parser.add_argument("--exit-quality", choices=EXIT_QUALITIES, default="wins",
                        help="what Q accumulates: rounds won (default) or aggregated scores")  # fmt: skip
    parser.add_argument("--exit-rule", choices=EXIT_RULES, default="entropy",
                        help="entropy of softmax(Q) (default) or a lead of exit_lead_z * sqrt(rounds)")  # fmt: skip
    parser.add_argument("--exit-lead-z", type=float, default=1.645,
                        help="--exit-rule lead: the lead needed, in sqrt(verified rounds) (default 1.645)")  # fmt: skip
    parser.add_argument("--keep-exits", action="store_true", help=(
        "with --exit --exit-rule lead: Q adds up across requests and a member that exits stays out of later "
        "ones (specfuse serve; use a stricter --exit-lead-z, e.g. 3)"))  # fmt: skip
    parser.add_argument("--tool-vote", choices=TOOL_VOTES, default="native", help=(
        "with --tools: who votes on whether to call a tool: the members whose templates show the tools "
        "(native, default) or every member (all)"))  # fmt: skip
    parser.add_argument("--weights", action="store_true", help="online (Hedge) weights over scorers")
    parser.add_argument("--weights-eta0", type=float, default=1.0, help="Hedge learning rate η0 (default 1)")
    parser.add_argument("--weights-schedule", choices=WEIGHT_SCHEDULES, default="1/t", help="η_t decay (default 1/t)")
    parser.add_argument("--keep-weights", action="store_true", help="carry weights (and calibrated scales) across requests")
    parser.add_argument("--device", help="device for local members (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", help="dtype for local members (float32, bfloat16, float16)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="auto", help=(
        "how local members share the machine: parallel (own thread and share of the cores each), "
        "turns (one at a time, all cores) or auto (parallel when there is a core per CPU member)"))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="specfuse",
        description="Several LLMs answer together with SpecFuse (next-segment prediction ensembling).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ask = commands.add_parser("ask", help="answer a question with the ensemble, streaming each accepted segment")
    ask.add_argument("question", help="the question; '-' reads it from standard input")
    ask.add_argument("--system", help="system message")
    ask.add_argument("--tools", metavar="FILE.json",
                     help="JSON file with a list of OpenAI function tools: the answer may call them")  # fmt: skip
    ask.add_argument("--tool-choice", metavar="CHOICE",
                     help="with --tools: auto (default), required, none, or a tool's name")  # fmt: skip
    ask.add_argument("--json-schema", metavar="FILE.json", help="JSON schema file: the answer is one JSON value of it")
    _fusion_arguments(ask)
    output = ask.add_mutually_exclusive_group()
    output.add_argument("--trace", action="store_true", help="after the answer, print a per-round table")
    output.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    commands.add_parser("presets", help="list the named member presets")
    _eval_parser(commands)
    _serve_parser(commands)
    return parser


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the ensemble over an OpenAI-compatible HTTP API (extra: serve)")
    _fusion_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $SPECFUSE_SERVER_API_KEY)")
    serve.add_argument("--model-name", default="specfuse", help="the model id clients send (default specfuse)")
    serve.add_argument("--max-concurrent", type=int, default=8, help="requests answered at once (default 8)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond that; then 429 (default 32)")
    serve.add_argument("--max-body-bytes", type=int, default=2 * 1024 * 1024, help="larger bodies get 413 (2 MiB)")
    serve.add_argument("--shutdown-timeout", type=float, default=10.0,
                       help="on SIGTERM, seconds in-flight requests may take before they are cancelled (default 10)")  # fmt: skip
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def _quality_harness() -> Any:
    """``benchmarks.quality`` from the source checkout this package runs from (editable installs)."""
    try:
        from benchmarks import quality
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(root, "benchmarks", "quality.py")):
            return None
        sys.path.insert(0, root)
        from benchmarks import quality
    return quality


def _eval_parser(commands: Any) -> None:
    harness = _quality_harness()
    help_text = "IFEval-style quality of members alone vs SpecFuse variants, with a paired comparison"
    if harness is None:
        commands.add_parser("eval", help=help_text + " (needs a source checkout)")
        return
    commands.add_parser("eval", help=help_text, parents=[harness.build_parser(add_help=False)],
                        description=harness.__doc__.split("\n\n")[0])  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    harness = _quality_harness()
    if harness is None:
        print("specfuse: error: 'specfuse eval' runs benchmarks/quality.py and needs a source checkout",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    _quiet_libraries()
    return harness.run(args, paired_to_stdout=True)


def config_from_args(args: argparse.Namespace) -> FusionConfig:
    return FusionConfig(
        segment_tokens=args.segment_tokens,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop or ()),
        score_mode=args.score_mode,
        normalize=args.normalize,
        softmax_temperature=args.softmax_temperature,
        score_span=args.score_span,
        tie_break=args.tie_break,
        exclude_self_scores=args.exclude_self,
        cache=not args.no_kv_cache,
        exit=args.exit,
        exit_min_rounds=args.exit_min_rounds,
        exit_temperature=args.exit_temperature,
        exit_entropy=args.exit_entropy,
        exit_share=args.exit_share,
        exit_quality=args.exit_quality,
        exit_rule=args.exit_rule,
        exit_lead_z=args.exit_lead_z,
        keep_exits=args.keep_exits,
        weights=args.weights,
        weights_eta0=args.weights_eta0,
        weights_schedule=args.weights_schedule,
        keep_weights=args.keep_weights,
        tool_vote=args.tool_vote,
    )


def member_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def trace_table(result: FusionResult) -> str:
    """A readable per-round table: candidates with aggregated scores, winner (*) and time."""
    lines = ["", f"{'round':>5}  {'winner':<28} {'time':>7}  candidates (aggregated score, * = winner)"]
    for event in result.trace:
        shown = []
        for candidate, total in zip(event.candidates, event.totals):
            mark = "*" if candidate.drafters == event.winners else " "
            end = "⏎" if candidate.ends else ""
            shown.append(f"{mark}{json.dumps(candidate.text, ensure_ascii=False)}{end} {total:.2f}")
        note = " (consensus)" if event.consensus else ""
        winner = ",".join(event.winners) or "-"
        lines.append(f"{event.round:>5}  {winner[:28]:<28} {event.timings.round_s:>6.2f}s  {' | '.join(shown)}{note}")
        for record in event.exits:
            lines.append(f"{'':>5}  exit: {record.member} ({record.reason})")
    summary = result.summary()
    lines.append(f"rounds: {summary['rounds']}, wins: {summary['wins']}, calls/round: {summary['calls_per_round']}, "
                 f"finish: {result.finish_reason}")  # fmt: skip
    return "\n".join(lines)


def _ask(args: argparse.Namespace) -> int:
    from specfuse_core.engine import Ensemble

    question = sys.stdin.read() if args.question == "-" else args.question
    config = config_from_args(args)
    _quiet_libraries()
    ensemble = Ensemble.from_specs(args.member, config, schedule=args.schedule, **member_options(args))
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": question}
    ]
    options = request_options(args)
    if args.json:
        print(json.dumps(ensemble.generate(messages, **options).to_dict(), ensure_ascii=False))
        return 0
    stream = ensemble.stream(messages, **options)
    for event in stream:
        sys.stdout.write(event.content)
        sys.stdout.flush()
    sys.stdout.write("\n")
    result = stream.result
    for call in result.tool_calls:
        print(f"tool call {call.id}: {call.name}({call.arguments_json()})")
    for invalid in result.invalid_tool_calls:
        print(f"invalid tool call ({invalid.error}): {invalid.arguments}")
    if args.trace:
        print(trace_table(result))
        print(f"schedule {ensemble.schedule}: {describe(ensemble.placements)}")
    return 0


def _json_file(path: str, option: str) -> Any:
    from specfuse_core.errors import InvalidRequestError

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise InvalidRequestError(f"{option} {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"{option} {path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The tool and response-format options of ``specfuse ask`` as ``Ensemble.generate`` keywords."""
    options: dict[str, Any] = {}
    if args.tools:
        tools = _json_file(args.tools, "--tools")
        options["tools"] = tools.get("tools", tools) if isinstance(tools, dict) else tools
    if args.tool_choice:
        options["tool_choice"] = args.tool_choice
    if args.json_schema:
        schema = _json_file(args.json_schema, "--json-schema")
        options["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return options


def _serve(args: argparse.Namespace) -> int:
    try:
        from specfuse_integrations.server import serve
    except ImportError as error:
        print(f"specfuse: error: the server needs the serve extra: pip install 'specfuse[serve]' ({error})",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    from specfuse_core.engine import Ensemble

    config = config_from_args(args)
    api_key = args.api_key or os.environ.get("SPECFUSE_SERVER_API_KEY") or None
    options = member_options(args)

    def load() -> Ensemble:
        _quiet_libraries()
        return Ensemble.from_specs(args.member, config, schedule=args.schedule, **options)

    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    return serve(load, host=args.host, port=args.port, api_key=api_key, model_name=args.model_name,
                 max_concurrent=args.max_concurrent, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                 shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)  # fmt: skip


def _presets() -> int:
    from specfuse_core.presets import PRESETS

    from specfuse_core.engine import DEFAULT_MEMBERS

    for preset in PRESETS.values():
        default = " (default)" if preset.name in DEFAULT_MEMBERS else ""
        print(f"{preset.name:<30} {preset.description}{default}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    prefer_passive_openmp()  # before torch loads OpenMP; an OMP_WAIT_POLICY already set wins
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "presets":
            return _presets()
        if args.command == "serve":
            return _serve(args)
        if args.command == "eval":
            return _eval(args)
        return _ask(args)
    except SpecFuseError as error:
        print(f"specfuse: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
