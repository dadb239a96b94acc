"""Segment boundaries (docs/algorithm.md §3.2): trim only a draft that ended inside a word."""

import pytest

from specfuse_core.segments import ends_inside_word, is_word_char, trim_to_word_boundary


@pytest.mark.parametrize("ch", ["a", "Z", "5", "_", "é", "ß", "한", "д", "\u0301"])
def test_word_characters(ch):
    assert is_word_char(ch)


@pytest.mark.parametrize("ch", ["北", "あ", "カ", "。", ".", ",", "-", " ", "\n", "(", "ก"])
def test_not_word_characters(ch):
    assert not is_word_char(ch)


@pytest.mark.parametrize(
    ("draft", "next_text", "expected"),
    [
        # English: a finished word or sentence is kept whole (the old code cut "Paris." off).
        ("The capital is Paris.", None, "The capital is Paris."),
        ("The capital is Paris", ".", "The capital is Paris"),
        ("The capital is Paris", " and", "The capital is Paris"),
        ("The capital is Paris", "", "The capital is Paris"),  # the drafter's next token is end-of-turn
        ("The capital is Par", "is", "The capital is"),  # inside a word: trimmed
        ("The capital is Paris", None, "The capital is"),  # unknown next token: a letter may go on
        ("Hell", "o", "Hell"),  # inside a word but no whitespace to cut at: kept whole
        ("1. **Create a Sleep Sched", "ule", "1. **Create a Sleep"),
        # Punctuation.
        ("Hello, world!", None, "Hello, world!"),
        ('He said: "yes', None, 'He said:'),
        ("It costs 3", ".50", "It costs 3"),
        ("It costs 3", "5", "It costs"),
        ("Sleep well;", " also", "Sleep well;"),
        ("well-", "known", "well-"),
        # Code.
        ("def foo(x):", None, "def foo(x):"),
        ("    return self.val", "ue", "    return"),
        ("    return self.value", "\n", "    return self.value"),
        ("x = my_var", "iable", "x ="),
        ("print(x)", None, "print(x)"),
        ("for i in range(10):\n    tot", "al", "for i in range(10):\n"),
        # Scripts without spaces: every character ends a word.
        ("答案是 北京。", None, "答案是 北京。"),
        ("答案是 北京", None, "答案是 北京"),
        ("答案是北京", "市", "答案是北京"),
        ("東京へ行きます", None, "東京へ行きます"),
        ("ภาษาไทย", None, "ภาษาไทย"),
        # Korean uses spaces: Hangul words are trimmed like English ones.
        ("서울은 한국의 수도", "입니다", "서울은 한국의"),
        ("서울은 한국의 수도", ".", "서울은 한국의 수도"),
        # Whitespace endings and empty drafts.
        ("The sky is ", None, "The sky is "),
        ("end.\nNe", None, "end.\n"),
        ("", None, ""),
    ],
)
def test_trim_only_inside_a_word(draft, next_text, expected):
    assert trim_to_word_boundary(draft, next_text) == expected


def test_ends_inside_word_rule():
    assert ends_inside_word("Par", "is")
    assert ends_inside_word("Paris")  # unknown: possibly inside
    assert not ends_inside_word("Paris", " ")
    assert not ends_inside_word("Paris.")
    assert not ends_inside_word("北京")
    assert not ends_inside_word("")
