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


class ConfigError(SpecFuseValueError):
    """A fusion option or member specification is invalid."""


class MemberError(SpecFuseError):
    """A member could not be built or failed while serving a request."""


class ModelLoadError(MemberError):
    """A model or tokenizer could not be found or loaded."""


class ChecksumError(ModelLoadError):
    """Downloaded weights do not match their published sha256."""


class NotSupportedYetError(ConfigError):
    """A member kind that a later release will support (e.g. remote endpoints)."""


class NoActiveMembersError(MemberError):
    """Every drafter or every scorer has exited; the request cannot continue."""
