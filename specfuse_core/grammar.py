"""Grammar-constrained drafting: the only module that imports the grammar library (xgrammar).

One request's grammar is the same *language* for every member, so validity is a property of text:

- :class:`TextGrammar` (the engine's) checks candidates as text, whoever drafted them: the longest
  valid prefix, whether the answer may end here, what text the grammar forces next.
- :class:`TokenConstraint` (one per local member session) follows the accepted text and masks the
  member's own tokens while it drafts, with a grammar compiled for that member's tokenizer.

Grammars (``ToolRequest`` -> structural tag):

- ``auto`` tools: free text; ``<tool_call>`` starts a call whose name and arguments must be valid;
- ``required``: one or more calls and nothing else (one when ``parallel_tool_calls=False``);
- a named tool: exactly one call of that tool;
- ``response_format``: one JSON value of the schema; with ``auto`` tools, either that or calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError, InvalidRequestError
from .tools import CALL_OPEN, ToolRequest

try:
    import xgrammar as xgr
except ImportError:  # pragma: no cover - depends on the environment
    xgr = None

_CALL_BEGIN = CALL_OPEN + '\n{"name": "'
_ARGUMENTS = '", "arguments": '
_CALL_END = "}\n</tool_call>"
_MAX_WHITESPACE = 2
"""Whitespace characters allowed in a row inside JSON: enough for pretty JSON, no endless runs."""


class GrammarError(InvalidRequestError):
    """The request's schema or tools cannot be compiled into a grammar."""


def _require_library() -> Any:
    if xgr is None:
        raise ConfigError(
            "tools and response_format need constrained decoding: install the 'tools' extra "
            "(pip install 'specfuse[tools]')"
        )
    return xgr


def _json_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": schema or {"type": "object"},
        "max_whitespace_cnt": _MAX_WHITESPACE,
    }


def _call_tag(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    return {
        "type": "tag",
        "begin": _CALL_BEGIN + function["name"] + _ARGUMENTS,
        "content": _json_format(function["parameters"]),
        "end": _CALL_END,
    }


def structural_tag(request: ToolRequest) -> dict[str, Any]:
    """The structural tag (xgrammar's JSON form) of a request's grammar."""
    tags = [_call_tag(t) for t in request.tools]
    calls_only = {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": "\n",
        "at_least_one": True,
        "stop_after_first": not request.parallel,
    }
    if request.choice == "named":
        fmt: dict[str, Any] = next(t for t in tags if t["begin"] == _CALL_BEGIN + str(request.name) + _ARGUMENTS)
    elif request.choice == "required":
        fmt = calls_only
    elif request.calls_tools and request.response_schema is not None:
        fmt = {"type": "or", "elements": [_json_format(request.response_schema), calls_only]}
    elif request.calls_tools:
        fmt = {
            "type": "triggered_tags",
            "triggers": [CALL_OPEN],
            "tags": tags,
            "at_least_one": False,
            "stop_after_first": not request.parallel,
        }
    elif request.response_schema is not None:
        fmt = _json_format(request.response_schema)
    else:
        raise ValueError("the request has no grammar")
    return {"type": "structural_tag", "format": fmt}


class _Vocabulary:
    """A tokenizer as the grammar library sees it, with a small cache of compiled grammars."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self.compiler = _require_library().GrammarCompiler(info)
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, request: ToolRequest) -> Any:
        key = request.key()
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
        tag = json.dumps(structural_tag(request), ensure_ascii=False)
        try:
            compiled = self.compiler.compile_structural_tag(tag)
        except Exception as error:  # noqa: BLE001 - the library raises RuntimeError/ValueError variants
            raise GrammarError(f"the tools or response_format schema cannot be compiled: {error}") from None
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > 32:
                self._compiled.popitem(last=False)
        return compiled


class TokenVocabulary(_Vocabulary):
    """A member's tokenizer for the grammar library; built once per tokenizer (about a second)."""

    _cache: dict[int, tuple[Any, TokenVocabulary]] = {}
    _cache_lock = threading.Lock()

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        lib = _require_library()
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(sorted(stop_token_ids))
        super().__init__(
            lib.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(self.stop_token_ids))
        )

    @classmethod
    def of(cls, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> TokenVocabulary:
        with cls._cache_lock:
            entry = cls._cache.get(id(tokenizer))
            if entry is None or entry[0] is not tokenizer:
                entry = (tokenizer, cls(tokenizer, vocab_size, stop_token_ids))
                cls._cache[id(tokenizer)] = entry
            return entry[1]


class _ByteVocabulary(_Vocabulary):
    """256 one-byte tokens and an end token: a tokenizer-free view of the grammar, for checking text."""

    END = 256

    def __init__(self) -> None:
        lib = _require_library()
        vocab = [bytes([b]) for b in range(256)] + [b"<|specfuse_end|>"]
        super().__init__(lib.TokenizerInfo(vocab, stop_token_ids=[self.END]))


_byte_vocabulary: _ByteVocabulary | None = None


def _bytes_view() -> _ByteVocabulary:
    global _byte_vocabulary
    if _byte_vocabulary is None:
        _byte_vocabulary = _ByteVocabulary()
    return _byte_vocabulary


class _Follower:
    """A matcher that follows the accepted text, which only grows (or, rarely, is cut back)."""

    def __init__(self, compiled: Any) -> None:
        self.matcher = _require_library().GrammarMatcher(compiled)
        self.text = ""
        self.broken = False

    def sync(self, text: str) -> None:
        if text == self.text:
            return
        if text.startswith(self.text) and not self.broken:
            ok = self.matcher.accept_string(text[len(self.text) :])
        else:
            self.matcher.reset()
            ok = self.matcher.accept_string(text)
        self.text = text
        self.broken = not ok


def _timed(method: Any) -> Any:
    def wrapper(self: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args)
        finally:
            self.seconds += time.perf_counter() - start

    wrapper.__doc__ = method.__doc__
    return wrapper


class TextGrammar:
    """The engine's view of a request's grammar: checks any text, whatever tokenizer produced it.

    ``seconds`` is the time spent in its checks so far.
    """

    def __init__(self, request: ToolRequest) -> None:
        self._view = _bytes_view()
        self._follower = _Follower(self._view.compile(request))
        self._mask = _require_library().allocate_token_bitmask(1, _ByteVocabulary.END + 1)
        self.seconds = 0.0

    def _after(self, accepted: str, text: str = "") -> Any:
        """A matcher after ``accepted + text``, or ``None`` when that is not a valid prefix."""
        self._follower.sync(accepted)
        if self._follower.broken:
            return None
        matcher = self._follower.matcher.fork()
        return matcher if not text or matcher.accept_string(text) else None

    @_timed
    def valid_prefix_length(self, accepted: str, text: str) -> int:
        """How many leading characters of ``text`` can follow ``accepted`` under the grammar."""
        matcher = self._after(accepted)
        if matcher is None:
            return 0
        if matcher.accept_string(text):
            return len(text)
        for index, char in enumerate(text):
            if not matcher.accept_string(char):
                return index
        return len(text)

    @_timed
    def is_complete(self, accepted: str, text: str = "") -> bool:
        """Whether the answer may end after ``accepted + text``."""
        matcher = self._after(accepted, text)
        return matcher is not None and bool(matcher.accept_token(_ByteVocabulary.END))

    @_timed
    def must_end(self, accepted: str) -> bool:
        """Whether the grammar allows nothing after ``accepted`` but the end of the answer."""
        matcher = self._after(accepted)
        if matcher is None or matcher.is_terminated():
            return matcher is not None
        matcher.fill_next_token_bitmask(self._mask)
        return not any(word != 0 for word in self._mask[0, :8].tolist())  # bits 0..255: the byte tokens

    @_timed
    def forced(self, accepted: str) -> str:
        """Text that the grammar forces after ``accepted`` (``""`` when there is a choice)."""
        matcher = self._after(accepted)
        return str(matcher.find_jump_forward_string()) if matcher is not None else ""


class TokenConstraint:
    """A member session's grammar state: follows the accepted text, masks tokens while drafting.

    ``seconds`` is the time spent on the grammar so far (syncing, masks, advancing).
    """

    def __init__(self, vocabulary: TokenVocabulary, request: ToolRequest) -> None:
        self.vocabulary = vocabulary
        self._follower = _Follower(vocabulary.compile(request))
        self._mask = _require_library().allocate_token_bitmask(1, vocabulary.vocab_size)
        self.seconds = 0.0

    def sync(self, accepted_text: str) -> None:
        start = time.perf_counter()
        self._follower.sync(accepted_text)
        self.seconds += time.perf_counter() - start

    def start_draft(self) -> DraftConstraint | None:
        """A fork for one draft, or ``None`` when the accepted text left the grammar (draft freely)."""
        if self._follower.broken:
            return None
        return DraftConstraint(self, self._follower.matcher.fork(), self._mask)


class DraftConstraint:
    """The grammar state inside one draft."""

    def __init__(self, owner: TokenConstraint, matcher: Any, mask: Any) -> None:
        self.owner = owner
        self.matcher = matcher
        self.mask = mask
        self.off = False

    def masked(self, logits: Any) -> Any:
        """A copy of ``logits`` (1-D) where tokens the grammar forbids are ``-inf``.

        Where the grammar forces text that would complete the answer (a call's closing tag), the
        end-of-turn tokens stay allowed: a member that would end here ends (the engine adds the forced
        text) instead of spelling a tag it does not want and writing on."""
        if self.off or self.matcher.is_terminated():
            return logits
        start = time.perf_counter()
        self.matcher.fill_next_token_bitmask(self.mask)
        masked = logits.clone().unsqueeze(0)
        xgr.apply_token_bitmask_inplace(masked, self.mask.to(masked.device))
        if self._implied_completion():
            stops = list(self.owner.vocabulary.stop_token_ids)
            masked[0, stops] = logits[stops].to(masked.dtype)
        self.owner.seconds += time.perf_counter() - start
        return masked[0]

    def _implied_completion(self) -> str:
        """The forced text after which the answer may end, when there is one (else ``""``)."""
        forced = str(self.matcher.find_jump_forward_string())
        if not forced:
            return ""
        after = self.matcher.fork()
        stops = self.owner.vocabulary.stop_token_ids
        complete = after.accept_string(forced) and bool(stops) and after.accept_token(stops[0])
        return forced if complete else ""

    def advance(self, token_id: int) -> None:
        start = time.perf_counter()
        if not self.off and not self.matcher.is_terminated() and not self.matcher.accept_token(token_id):
            closing = self._implied_completion() if token_id in self.owner.vocabulary.stop_token_ids else ""
            if not (closing and self.matcher.accept_string(closing) and self.matcher.accept_token(token_id)):
                self.off = True  # cannot happen with a masked sample; never let it stop the draft
        self.owner.seconds += time.perf_counter() - start
