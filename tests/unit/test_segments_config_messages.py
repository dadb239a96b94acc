import pytest

from specfuse_core import ConfigError, FusionConfig, InvalidRequestError
from specfuse_core.messages import validate_messages
from specfuse_core.segments import common_prefix_length, find_stop, trim_to_word_boundary


@pytest.mark.parametrize(
    ("draft", "expected"),
    [
        ("Hello", "Hello"),  # no whitespace: kept whole (the reference code would give "Hell")
        ("The sky is blu", "The sky is"),
        ("The sky is ", "The sky is "),  # ended on whitespace: not mid-word
        ("end.\nNe", "end.\n"),  # newlines stay with the accepted text
        ("end.\n\nNe", "end.\n\n"),
        (" leading", " leading"),  # the only whitespace is leading: nothing inside to cut at
        ("", ""),
    ],
)
def test_trim_to_word_boundary(draft, expected):
    assert trim_to_word_boundary(draft) == expected


def test_common_prefix_and_stop():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert find_stop("abc STOP def", ["STOP"]) == 4
    assert find_stop("abc STOP def", ["STOP"], search_from=9) is None
    assert find_stop("abcST", ["STOP"]) is None
    assert find_stop("x\n\ny END", ["END", "\n\n"]) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_tokens": 0},
        {"max_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"score_mode": "median"},
        {"normalize": "max"},
        {"exit_entropy": 2},
        {"stop": [""]},
        {"segment_tokens": 2.5},
    ],
)
def test_bad_config_raises_config_error(kwargs):
    with pytest.raises(ConfigError) as info:
        FusionConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert next(iter(kwargs)) in str(info.value)


def test_config_defaults_and_replace():
    config = FusionConfig()
    assert (config.segment_tokens, config.score_mode, config.normalize) == (10, "mean_prob", "sum")
    assert (config.draft_temperature, config.draft_top_p) == (0.6, 0.9)
    greedy = config.replace(temperature=0)
    assert greedy.greedy and greedy.draft_top_p == 1.0
    with pytest.raises(ConfigError, match="unknown fusion option"):
        config.replace(segment_size=3)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "empty"),
        ([{"role": "wizard", "content": "hi"}], "unknown role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "image_url"),
        ([{"role": "user", "content": 42}], "content must be text"),
        ("hello", "list"),
    ],
)
def test_bad_messages_raise_invalid_request(messages, problem):
    with pytest.raises(InvalidRequestError, match=problem):
        validate_messages(messages)


def test_text_blocks_are_joined():
    out = validate_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert out == [{"role": "user", "content": "ab"}]
