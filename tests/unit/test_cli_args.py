"""The `specfuse ask` options reach FusionConfig (parsing only; no models)."""

import pytest

from specfuse_integrations.cli import build_parser, config_from_args
from specfuse_core.errors import ConfigError


def parse(*args: str):
    return config_from_args(build_parser().parse_args(["ask", "hi", *args]))


def test_defaults_match_fusion_config():
    from specfuse_core import FusionConfig

    assert parse() == FusionConfig()


def test_policy_options_reach_the_config():
    config = parse("--exit", "--exit-min-rounds", "2", "--exit-temperature", "0.5", "--exit-entropy", "0.4",
                   "--exit-share", "0.8", "--exit-quality", "scores", "--weights", "--weights-eta0", "2",
                   "--weights-schedule", "1/sqrt(t)", "--normalize", "softmax", "--softmax-temperature", "0.3")  # fmt: skip
    assert (config.exit, config.exit_min_rounds, config.exit_temperature, config.exit_entropy, config.exit_share) == (
        True, 2, 0.5, 0.4, 0.8)  # fmt: skip
    assert config.exit_quality == "scores"
    assert (config.weights, config.weights_eta0, config.weights_schedule) == (True, 2.0, "1/sqrt(t)")
    assert (config.normalize, config.softmax_temperature) == ("softmax", 0.3)


def test_out_of_range_policy_option_is_a_config_error():
    with pytest.raises(ConfigError, match="exit_entropy must be in \\[0, 1\\]"):
        parse("--exit-entropy", "2")


@pytest.mark.parametrize("mode", ["sum", "softmax", "ratio", "calibrated", "rank"])
def test_every_normalisation_is_a_cli_choice(mode):
    assert parse("--normalize", mode).normalize == mode


def test_fair_vote_options_reach_the_config():
    config = parse("--score-span", "leading", "--exit", "--exit-rule", "lead", "--exit-lead-z", "1.2")
    assert (config.score_span, config.exit_rule, config.exit_lead_z) == ("leading", "lead", 1.2)


def test_tie_break_reaches_the_config():
    assert parse().tie_break is None and parse("--normalize", "calibrated").effective_tie_break == "coin"
    assert parse("--normalize", "calibrated", "--tie-break", "self_score").effective_tie_break == "self_score"


def test_tool_vote_reaches_the_config():
    assert parse().tool_vote == "native"
    assert parse("--tool-vote", "all").tool_vote == "all"


def test_eval_takes_the_quality_harness_options():
    from specfuse_eval import quality

    args = build_parser().parse_args(["eval", "--data", "mine.jsonl", "--configs", "members,specfuse+calibrated",
                                      "--member", "a", "--member", "b", "--limit", "5", "--score-only"])  # fmt: skip
    assert args.command == "eval" and args.data == "mine.jsonl" and args.limit == 5 and args.score_only
    harness = {a.dest for a in quality.build_parser()._actions} - {"help"}
    assert harness <= set(vars(args))


def test_keep_options_reach_the_config():
    assert (parse().keep_exits, parse().keep_weights) == (False, False)
    config = parse("--exit", "--exit-rule", "lead", "--keep-exits", "--keep-weights")
    assert (config.keep_exits, config.keep_weights) == (True, True)


def test_commands_import_only_what_they_run():
    """`specfuse ask`/`presets` import neither the server (FastAPI) nor the evaluation harness."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from specfuse_integrations import cli\n"
        "assert cli.main(['presets']) == 0\n"
        "cli.build_parser(eval_options=False).parse_args(['ask', 'hi', '--exit'])\n"
        "loaded = sorted(m for m in ('fastapi', 'uvicorn', 'specfuse_eval', 'benchmarks', 'langchain_core',"
        " 'llama_index') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
