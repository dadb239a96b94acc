"""Text and token-id helpers for segment boundaries (docs/algorithm.md §2–§3)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# Scripts written without spaces between words: every character boundary is a word boundary.
_NO_SPACE_SCRIPTS = (
    "CJK UNIFIED IDEOGRAPH",
    "CJK COMPATIBILITY IDEOGRAPH",
    "HIRAGANA",
    "KATAKANA",
    "HALFWIDTH KATAKANA",
    "THAI",
    "LAO",
    "KHMER",
    "MYANMAR",
)


def is_word_char(ch: str) -> bool:
    """A character that can sit inside a space-separated word: a letter, digit, combining mark or
    ``_``, except in scripts written without spaces (CJK, kana, Thai, Lao, Khmer, Myanmar)."""
    if ch == "_":
        return True
    category = unicodedata.category(ch)
    if category[0] not in "LN" and category not in ("Mn", "Mc"):
        return False
    return not unicodedata.name(ch, "").startswith(_NO_SPACE_SCRIPTS)


def ends_inside_word(text: str, next_text: str | None = None) -> bool:
    """Whether a draft that ran out of budget stopped inside a word.

    Only a draft whose last character is a word character can (see :func:`is_word_char`):
    punctuation, whitespace and CJK characters end a word. ``next_text`` is what the drafter's own
    next token would add: the draft ended inside a word exactly when that text also starts with a word
    character (``"Hell"`` + ``"o"``), and not when it starts with a space, punctuation or end-of-turn
    (``""``). Without it (``None``) a trailing word character counts as possibly inside a word.
    """
    if not text or not is_word_char(text[-1]):
        return False
    if next_text is None:
        return True
    return bool(next_text) and is_word_char(next_text[0])


def trim_to_word_boundary(text: str, next_text: str | None = None) -> str:
    """Trim a draft that ran out of budget inside a word back to its last whitespace (docs/algorithm.md §3.2).

    A draft that did not end inside a word (:func:`ends_inside_word`) is kept whole:
    ``"The capital is Paris."`` and ``"答案是 北京。"`` stay as they are, and so does ``"... Paris"`` when
    the drafter's next token is ``"."``. Otherwise only when the draft has whitespace after some text:
    a draft without such whitespace is kept whole (``"Hello"`` stays ``"Hello"``). Spaces go with the
    next word (``"is blu" -> "is"``); newlines stay with the accepted text (``"end.\\nNe" -> "end.\\n"``).
    """
    if not ends_inside_word(text, next_text):
        return text
    end = len(text)
    while end > 0 and not text[end - 1].isspace():
        end -= 1
    if end == 0:
        return text
    start = end
    while start > 0 and text[start - 1].isspace():
        start -= 1
    run = text[start:end]
    if "\n" in run:
        cut = start + run.rindex("\n") + 1
    else:
        cut = start
    return text[:cut] if cut > 0 else text


def find_stop(text: str, stops: Sequence[str], search_from: int = 0) -> int | None:
    """Index of the earliest stop string in ``text`` that ends after ``search_from``, or ``None``."""
    best: int | None = None
    for stop in stops:
        index = text.find(stop, max(0, search_from - len(stop) + 1))
        if index != -1 and (best is None or index < best):
            best = index
    return best
