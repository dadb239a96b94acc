"""The ``specfuse`` command: ask the ensemble a question from the terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from specfuse_core.config import FusionConfig, FusionOption, fusion_options
from specfuse_core.errors import SpecFuseError
from specfuse_core.scheduler import SCHEDULES, describe, prefer_passive_openmp
from specfuse_core.trace import FusionResult

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


_FLAG_ALIASES: dict[str, str] = {"exclude_self_scores": "--exclude-self"}
"""Older spellings of generated flags, still accepted."""


def _flag(option: FusionOption) -> str:
    return "--" + option.name.replace("_", "-")


def _fusion_arguments(parser: argparse.ArgumentParser) -> None:
    """``--member`` and one flag per :class:`FusionConfig` option (derived from it: names, types, choices,
    defaults and help), then the member placement flags."""
    parser.add_argument("--member", action="append", metavar="SPEC", help=(
        "member spec, repeatable: a preset name, a local directory, a Hub id or a .gguf file; "
        "append ::draft or ::score for a single role (default: the default two-model ensemble)"))  # fmt: skip
    fusion = parser.add_argument_group("fusion options (FusionConfig)")
    for option in fusion_options():
        flags = [_flag(option), *([_FLAG_ALIASES[option.name]] if option.name in _FLAG_ALIASES else [])]
        default = "" if option.default in (None, ()) else f" (default {option.default})"
        help_text = option.help + default
        if option.kind is bool:
            fusion.add_argument(*flags, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)  # fmt: skip
        elif option.kind is tuple:
            fusion.add_argument(*flags, dest=option.name, action="append", metavar="TEXT", help=help_text + ", repeatable")
        else:
            fusion.add_argument(*flags, dest=option.name, type=option.kind, choices=option.choices, default=None,
                                metavar=None if option.choices else option.kind.__name__.upper(), help=help_text)  # fmt: skip
    fusion.add_argument("--no-kv-cache", dest="cache", action="store_false", default=None, help=argparse.SUPPRESS)  # older spelling
    parser.add_argument("--device", help="device for local members (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", help="dtype for local members (float32, bfloat16, float16)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="auto", help=(
        "how local members share the machine: parallel (own thread and share of the cores each), "
        "turns (one at a time, all cores) or auto (parallel when there is a core per CPU member)"))  # fmt: skip


def build_parser(*, eval_options: bool = True) -> argparse.ArgumentParser:
    """The ``specfuse`` parser; ``eval_options=False`` leaves the evaluation harness unimported."""
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
    _eval_parser(commands, with_options=eval_options)
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


EVAL_HELP = "IFEval-style quality of members alone vs SpecFuse variants, with a paired comparison (extra: eval)"


def _eval_parser(commands: Any, *, with_options: bool) -> None:
    """``specfuse eval``; its options come from the harness, imported only when that command runs."""
    if not with_options:
        commands.add_parser("eval", help=EVAL_HELP)
        return
    from specfuse_eval import quality

    commands.add_parser("eval", help=EVAL_HELP, parents=[quality.build_parser(add_help=False)],
                        description=(quality.__doc__ or "").split("\n\n")[0])  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    from specfuse_eval import quality

    _quiet_libraries()
    return quality.run(args, paired_to_stdout=True)


def config_from_args(args: argparse.Namespace) -> FusionConfig:
    """The :class:`FusionConfig` of the fusion flags given (the others keep its defaults)."""
    given = {o.name: getattr(args, o.name) for o in fusion_options() if getattr(args, o.name, None) is not None}
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    return FusionConfig(**given)


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
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(eval_options=command == "eval")
    args = parser.parse_args(arguments)
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
