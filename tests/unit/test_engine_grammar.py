"""The engine's grammar check with scripted members (no model): drafts from members that cannot mask
their tokens (like remote ones) are cut to their longest valid prefix, and the trace says so."""

from __future__ import annotations

import json

import pytest

from scripted import ScriptedMember
from specfuse_core import Ensemble, FusionConfig

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def test_invalid_drafts_are_cut_to_their_valid_prefix_and_noted():
    # free text before the JSON is invalid; "{" is forced by the grammar, so the draft after it
    # starts inside the object: '"a": 12}' is valid, the trailing ' trailing words' is not.
    chatty = ScriptedMember("chatty", drafts=[(' "a": 12} trailing words', True)])
    quiet = ScriptedMember("quiet", drafts=[('"a": 7}', True)], prob=lambda accepted, text, ends: 0.1)
    ensemble = Ensemble([chatty, quiet], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    first = result.trace[0]
    assert first.forced == "{"
    assert [c.text for c in first.candidates] == [' "a": 12}', '"a": 7}']
    assert any("chatty: draft cut to its longest valid prefix" in note for note in first.notes)
    assert json.loads(result.text) == {"a": 12}
    assert result.finish_reason == "stop"


def test_an_end_where_the_grammar_is_incomplete_becomes_a_continuation():
    early = ScriptedMember("early", drafts=[('"a"', True), (": 3}", True)])
    ensemble = Ensemble([early], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    assert result.text == '{"a": 3}'
    assert "kept as a continuation" in result.trace[0].notes[0]
    assert ensemble.open_sessions == 0


def test_an_end_just_before_the_text_the_grammar_forces_ends_the_answer_with_that_text():
    # A member that ends right after a call's arguments (its end token allowed there, as the local
    # members' masks do) means the call's closing tag: it is added and the answer ends with one call.
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    caller = ScriptedMember("caller", drafts=[('"a": 1}}\n', True)])  # after the forced '...arguments": {'
    ensemble = Ensemble([caller], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], tools=tools, tool_choice="required")
    assert result.text == CALL
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", {"a": 1})]
    assert any("draft ended before the text the grammar forces ('</tool_call>'); added" in n for n in result.trace[0].notes)


def test_drafts_all_cut_to_nothing_end_the_answer_unfinished_not_as_a_normal_stop():
    stubborn = ScriptedMember("stubborn", drafts=[("I will not write JSON.", False)])
    ensemble = Ensemble([stubborn], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], response_format=FORMAT)
    assert result.text == "{"
    assert result.finish_reason == "length"
    assert any("ends unfinished" in note for note in result.trace[-1].notes)


def test_an_unfinished_call_that_cannot_go_on_is_reported_invalid():
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    stubborn = ScriptedMember("stubborn", drafts=[('{"name": "f", "arguments": {"a": 1', False), ("oops", False)])
    ensemble = Ensemble([stubborn], FusionConfig(segment_tokens=50, max_tokens=50))
    result = ensemble.generate([{"role": "user", "content": "a?"}], tools=tools, tool_choice="required")
    assert result.finish_reason == "length"
    assert not result.tool_calls and len(result.invalid_tool_calls) == 1


# -- who decides whether to call a tool (FusionConfig.tool_vote) ------------------------------------

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
CALL = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
PROSE = "It is sunny."


def _call_versus_prose(**config: object) -> tuple[Ensemble, object]:
    """A tool-trained member drafts a call; a member whose template dropped the tools drafts prose and
    scores its prose far above the call; the caller prefers its call only narrowly. With every scorer
    voting (sum normalisation) the prose wins: 0.1/1.0 + 0.6/1.1 < 0.9/1.0 + 0.5/1.1."""
    caller = ScriptedMember(
        "caller", drafts=[(CALL, True)], native_tools=True, prob=lambda acc, text, ends: 0.6 if "<tool_call>" in text else 0.5
    )
    talker = ScriptedMember("talker", drafts=[(PROSE, True)], prob=lambda acc, text, ends: 0.1 if "<tool_call>" in text else 0.9)
    ensemble = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80, **config))
    return ensemble, ensemble.generate([{"role": "user", "content": "weather?"}], tools=TOOLS)


def test_whether_to_call_follows_the_drafts_of_the_members_whose_templates_show_the_tools():
    ensemble, result = _call_versus_prose()
    first = result.trace[0]
    assert not first.consensus and len(first.candidates) == 2
    assert first.totals[1] > first.totals[0]  # the scores still favour the prose: the drafts decided
    assert any(
        "tool use (call / text): the members whose templates show the tools all drafted a call" in n for n in first.notes
    )
    assert first.winners == ("caller",)
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", {"a": 1})]
    assert ensemble.open_sessions == 0


def test_a_call_drafted_only_by_a_member_without_the_tools_is_not_eligible():
    # The tool-trained member answers in prose; the other opens a call and every score favours the call.
    likes_calls = lambda acc, text, ends: 0.9 if "<tool_call>" in text else 0.2  # noqa: E731
    caller = ScriptedMember("caller", drafts=[(CALL, True)], prob=likes_calls)
    native = ScriptedMember("native", drafts=[(PROSE, True)], native_tools=True, prob=likes_calls)
    result = Ensemble([caller, native], FusionConfig(segment_tokens=50, max_tokens=80)).generate(
        [{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    assert result.trace[0].totals[0] > result.trace[0].totals[1]
    assert any("all drafted text" in n for n in result.trace[0].notes)
    assert result.text == PROSE and not result.tool_calls


def test_when_the_tool_trained_members_disagree_only_their_scores_vote():
    # Two tool-trained members split (call vs prose); a third without the tools loves the prose. Sum
    # normalisation: the natives give the call 0.6/1.1 + 0.55/1.0 > their prose votes; the third would
    # tip it to the prose.
    a = ScriptedMember("a", drafts=[(CALL, True)], native_tools=True, prob=lambda acc, t, e: 0.6 if "<tool_call>" in t else 0.5)
    b = ScriptedMember("b", drafts=[(PROSE, True)], native_tools=True, prob=lambda acc, t, e: 0.55 if "<tool_call>" in t else 0.45)
    c = ScriptedMember("c", drafts=[(PROSE, True)], prob=lambda acc, t, e: 0.01 if "<tool_call>" in t else 0.99)
    result = Ensemble([a, b, c], FusionConfig(segment_tokens=50, max_tokens=80)).generate(
        [{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    first = result.trace[0]
    assert any("tool use (call / text): voted by the members whose templates show the tools (a, b)" in n for n in first.notes)
    assert first.winners == ("a",) and result.finish_reason == "tool_calls"
    everyone = Ensemble([a, b, c], FusionConfig(segment_tokens=50, max_tokens=80, tool_vote="all")).generate(
        [{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    assert everyone.text == PROSE


def test_tool_vote_all_lets_every_scorer_decide_the_call():
    _, result = _call_versus_prose(tool_vote="all")
    assert result.trace[0].winners == ("talker",)
    assert result.text == PROSE and result.finish_reason == "stop"
    assert not any("tool use" in n for n in result.trace[0].notes)


def test_every_scorer_votes_when_no_template_shows_the_tools():
    a = ScriptedMember("a", drafts=[(CALL, True)], prob=lambda acc, text, ends: 0.6 if "<tool_call>" in text else 0.5)
    b = ScriptedMember("b", drafts=[(PROSE, True)], prob=lambda acc, text, ends: 0.1 if "<tool_call>" in text else 0.9)
    result = Ensemble([a, b], FusionConfig(segment_tokens=50, max_tokens=80)).generate(
        [{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    assert result.trace[0].winners == ("b",)
    assert not any("tool use" in n for n in result.trace[0].notes)


def test_rounds_that_do_not_decide_a_call_are_voted_by_everyone():
    # Both draft prose: no call decision, so the non-native member's strong preference wins.
    caller = ScriptedMember("caller", drafts=[("Sunny.", True)], native_tools=True, prob=lambda acc, text, ends: 0.5)
    talker = ScriptedMember("talker", drafts=[(PROSE, True)], prob=lambda acc, text, ends: 0.9 if text == PROSE else 0.1)
    result = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80)).generate(
        [{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    assert result.text == PROSE
    assert not any("tool use" in n for n in result.trace[0].notes)


def test_after_a_call_the_tool_trained_members_decide_whether_the_turn_ends():
    # Round 1: both write the same call. Round 2: the tool-trained member ends the turn (the tool must
    # run first); the other writes on about the result it cannot know, and scores its own text far higher.
    caller = ScriptedMember(
        "caller", drafts=[(CALL, False), ("", True)], native_tools=True,
        prob=lambda acc, text, ends: 0.6 if not text.strip() else 0.5,
    )  # fmt: skip
    talker = ScriptedMember(
        "talker", drafts=[(CALL, False), ("\nThe weather is sunny.", True)],
        prob=lambda acc, text, ends: 0.1 if not text.strip() else 0.9,
    )  # fmt: skip
    messages = [{"role": "user", "content": "weather?"}]
    result = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80)).generate(messages, tools=TOOLS)
    second = result.trace[1]
    assert any("tool use (end / text)" in n and "all drafted the end of the answer" in n for n in second.notes)
    assert result.text == CALL and result.finish_reason == "tool_calls" and result.content == ""
    everyone = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80, tool_vote="all"))
    assert everyone.generate(messages, tools=TOOLS).text == CALL + "\nThe weather is sunny."


SECOND_CALL = '\n<tool_call>\n{"name": "f", "arguments": {"a": 2}}\n</tool_call>'


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_what_follows_a_call_is_decided_also_when_the_candidates_first_close_it(choice):
    # Round 1 leaves the call open; in round 2 both candidates close it, then the tool-trained
    # member's ends the turn while the other's opens a second call and scores itself far higher.
    # With required calls of the one tool the grammar forces the call up to its arguments' "{".
    forced = CALL[: CALL.index('"a"')] if choice == "required" else ""
    opened = CALL[len(forced) : CALL.index("1}")]
    caller = ScriptedMember(
        "caller", drafts=[(opened, False), ("1}}\n</tool_call>", True)], native_tools=True,
        prob=lambda acc, text, ends: 0.6 if ends and "a\": 2" not in text else 0.5,
    )  # fmt: skip
    talker = ScriptedMember(
        "talker", drafts=[(opened, False), ("1}}\n</tool_call>" + SECOND_CALL, True)],
        prob=lambda acc, text, ends: 0.9 if "a\": 2" in text else 0.1,
    )  # fmt: skip
    messages = [{"role": "user", "content": "a?"}]
    config = FusionConfig(segment_tokens=50, max_tokens=80)
    result = Ensemble([caller, talker], config).generate(messages, tools=TOOLS, tool_choice=choice)
    second = result.trace[1]
    assert any("all drafted the end of the answer" in n for n in second.notes), second.notes
    assert result.text == CALL and [c.arguments for c in result.tool_calls] == [{"a": 1}]
    everyone = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80, tool_vote="all"))
    both = everyone.generate(messages, tools=TOOLS, tool_choice=choice)
    assert [c.arguments for c in both.tool_calls] == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_candidate_stopping_before_the_forced_closing_tag_does_not_outvote_the_end(choice):
    # The other member's draft stops right before the call's closing tag (its budget, say): it counts
    # as closing the call and going on, so the tool-trained member's end of the turn decides.
    forced = CALL[: CALL.index('"a"')] if choice == "required" else ""
    opened = CALL[len(forced) : CALL.index("1}")]
    caller = ScriptedMember("caller", drafts=[(opened, False), ("1}}\n</tool_call>", True)], native_tools=True)
    talker = ScriptedMember(
        "talker", drafts=[(opened, False), ("1}}\n", False), (SECOND_CALL, True)],
        prob=lambda acc, text, ends: 0.1 if ends else 0.9,
    )  # fmt: skip
    result = Ensemble([caller, talker], FusionConfig(segment_tokens=50, max_tokens=80)).generate(
        [{"role": "user", "content": "a?"}], tools=TOOLS, tool_choice=choice
    )
    assert any("all drafted the end of the answer" in n for n in result.trace[1].notes), result.trace[1].notes
    assert result.text == CALL and len(result.tool_calls) == 1


def test_past_open_call_moves_the_closing_part_of_a_candidate_to_the_accepted_text():
    from specfuse_core.tools import past_open_call

    opened = CALL[: CALL.index("1}")]
    assert past_open_call(opened, "1}}\n</tool_call>\nDone.") == (CALL, "\nDone.")
    assert past_open_call(opened, "1}") is None  # still inside the call
    assert past_open_call(CALL + "\n", "Done.") == (CALL + "\n", "Done.")  # outside any call: unchanged


def test_tool_actions_and_the_rounds_they_decide():
    from specfuse_core.tools import decides_tool_use, tool_action

    assert tool_action("", "<tool_call>\n{", False) == "call"
    assert tool_action(CALL, "", True) == "end"
    assert tool_action(CALL, " \n", True) == "end"
    assert tool_action("", "Sunny.", True) == "text"
    assert decides_tool_use("", ["call", "text"])
    assert not decides_tool_use("", ["text", "end"])  # plain prose ending or going on: not about tools
    assert decides_tool_use(CALL + "\n", ["end", "text"])  # what follows a finished call
    assert not decides_tool_use("<tool_call>\n{", ["text", "end"])  # inside a call: the grammar's business
    assert not decides_tool_use(CALL, ["end", "end"])


def test_opens_call_sees_tags_and_their_first_characters_outside_calls_only():
    from specfuse_core.tools import opens_call

    assert opens_call("", "<tool_call>\n{")
    assert opens_call("Let me check.\n", "<tool_")
    assert opens_call("<", "tool_call>")
    assert not opens_call("", "It is 3 < 4")
    assert not opens_call("", "Sunny.")
    assert not opens_call("<tool_call>\n{", '"name": "f"')  # inside a call: nothing is being opened
    assert opens_call(CALL + "\n", "<tool_call>")  # a second call after the first


def test_tool_vote_is_validated():
    import pytest

    from specfuse_core import ConfigError

    with pytest.raises(ConfigError, match="tool_vote must be one of native, all"):
        FusionConfig(tool_vote="loudest")
