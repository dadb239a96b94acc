"""Exception types raised by specfuse.

Every error a caller can provoke with bad input is a :class:`SpecFuseValueError`
(a ``ValueError``); problems with a member (loading, checksum, runtime failure) are
:class:`MemberError` subclasses. All share the base :class:`SpecFuseError`.
"""

from __future__ import annotations


class SpecFuseError(Exception):
    """Base class of every exception raised by specfuse."""


class SpecFuseValueError(SpecFuseError, ValueError):
    """Bad input: a malformed request or an invalid configuration value."""


class InvalidRequestError(SpecFuseValueError):
    """The messages of a request are malformed (empty, unknown role, non-text content)."""

    code: str | None = None
    """OpenAI's error code for this kind of request error (the server answers with it)."""
    param: str | None = None
    """The request field the error is about, when one is."""


class RequestLimitError(InvalidRequestError):
    """A request asks for more work than the ensemble's limits allow (too many tools, too large a
    schema, too long a prompt); the message names the limit and the ``FusionConfig`` option that sets it."""

    code = "request_too_large"

    def __init__(self, message: str, *, limit: str, param: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.param = param


class ContextLengthError(InvalidRequestError):
    """A member cannot hold the request's prompt plus ``max_tokens`` in its context window.

    ``overflows`` lists ``(member, prompt_tokens, max_tokens, context_window)`` for every member that
    cannot (with ``context_overflow="exit"`` those members exit instead, unless none would be left).
    """

    code = "context_length_exceeded"
    param = "messages"

    def __init__(self, message: str, overflows: tuple[tuple[str, int, int, int], ...]) -> None:
        super().__init__(message)
        self.overflows = overflows


class ConfigError(SpecFuseValueError):
    """A fusion option or member specification is invalid."""


class MemberError(SpecFuseError):
    """A member could not be built or failed while serving a request."""


class ModelLoadError(MemberError):
    """A model or tokenizer could not be found or loaded."""


class ChecksumError(ModelLoadError):
    """Downloaded weights do not match their published sha256."""


class NotSupportedYetError(ConfigError):
    """A spec or option that this code path does not handle.

    For example, a remote endpoint (``http://host:port/v1``) passed where a local model is loaded:
    remote OpenAI-compatible members are supported, but through ``load_member`` /
    ``Ensemble.from_specs`` (:class:`~specfuse_core.remote.OpenAICompatibleMember`), not ``HFMember``.
    """


class NoActiveMembersError(MemberError):
    """Every drafter or every scorer has exited; the request cannot continue."""
