"""Member specs and sharing of loaded members between ensembles and adapters."""

from __future__ import annotations

import threading
from typing import Any

from .errors import ConfigError, NotSupportedYetError
from .loading import is_remote_spec
from .member import ROLES, Member

_shared: dict[tuple[str, str, str], Member] = {}
_lock = threading.Lock()


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"source::role"`` into ``(source, role)``; the role defaults to ``"both"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a member spec must be a non-empty string, got {spec!r}")
    source, _, role = spec.strip().partition("::")
    role = role or "both"
    if role not in ROLES:
        raise ConfigError(f"member spec {spec!r}: role must be one of {', '.join(ROLES)}")
    return source, role


def load_member(spec: str, *, share: bool = True, **options: Any) -> Member:
    """Build the member a spec names, reusing an already loaded one when ``share`` is true."""
    source, role = parse_spec(spec)
    key = (source, role, repr(sorted(options.items())))
    with _lock:
        if share and key in _shared:
            return _shared[key]
        if is_remote_spec(source):
            raise NotSupportedYetError(f"remote members ({source}) are not supported yet by this version of specfuse")
        from .hf_member import HFMember

        member: Member = HFMember(source, role=role, **options)  # type: ignore[arg-type]
        if share:
            _shared[key] = member
        return member
