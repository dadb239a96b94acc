"""Member specs and sharing of loaded members between ensembles and adapters."""

from __future__ import annotations

import hashlib
import inspect
import threading
from typing import Any

from .errors import ConfigError
from .loading import is_remote_spec
from .member import ROLES, Member

_shared: dict[tuple[str, str, str], Member] = {}
_lock = threading.Lock()


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"source::role"`` into ``(source, role)``; the role defaults to ``"both"``.

    Remote specs (``http://host:port/v1#model::score``) are split at their last ``::`` so that
    IPv6 hosts such as ``http://[::1]:8000/v1`` stay intact.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a member spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if is_remote_spec(spec):
        head, sep, tail = spec.rpartition("::")
        if sep and tail.isalpha():
            source, role = head, tail
        else:
            source, role = spec, ""
    else:
        source, _, role = spec.partition("::")
    role = role or "both"
    if role not in ROLES:
        raise ConfigError(f"member spec {spec!r}: role must be one of {', '.join(ROLES)}")
    return source, role


def _remote_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options an ``OpenAICompatibleMember`` accepts; local-only ones (device, dtype) are ignored."""
    from .remote import OpenAICompatibleMember

    accepted = set(inspect.signature(OpenAICompatibleMember.__init__).parameters) - {"self", "base_url", "model", "role"}
    return {k: v for k, v in options.items() if k in accepted}


def _options_key(options: dict[str, Any]) -> str:
    safe = {
        k: ("sha256:" + hashlib.sha256(str(v).encode()).hexdigest()[:16] if k == "api_key" and v else v)
        for k, v in options.items()
    }
    return repr(sorted(safe.items()))


def load_member(spec: str, *, share: bool = True, **options: Any) -> Member:
    """Build the member a spec names, reusing an already loaded one when ``share`` is true.

    ``http(s)://host:port/v1`` or ``http(s)://host:port/v1#model`` builds an
    :class:`~specfuse_core.remote.OpenAICompatibleMember` (the ``remote`` extra).
    """
    source, role = parse_spec(spec)
    key = (source, role, _options_key(options))
    with _lock:
        if share and key in _shared:
            return _shared[key]
        member: Member
        if is_remote_spec(source):
            from .remote import OpenAICompatibleMember, parse_remote_spec

            url, model = parse_remote_spec(source)
            member = OpenAICompatibleMember(url, model, role=role, **_remote_options(options))  # type: ignore[arg-type]
        else:
            from .hf_member import HFMember

            member = HFMember(source, role=role, **options)  # type: ignore[arg-type]
        if share:
            _shared[key] = member
        return member
