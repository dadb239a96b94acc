"""Text and token-id helpers for segment boundaries (algorithm.md §2–§3)."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def trim_to_word_boundary(text: str) -> str:
    """Trim a draft that ran out of budget mid-word back to its last whitespace.

    Only when the draft has whitespace after some text: a draft without such whitespace is kept
    whole ("Hello" stays "Hello"). Spaces go with the next word (``"is blu" -> "is"``); newlines stay
    with the accepted text (``"end.\\nNe" -> "end.\\n"``). A draft ending in whitespace is kept whole.
    """
    if not text or text[-1].isspace():
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
