"""specfuse_core: the framework-agnostic SpecFuse engine.

Several LLMs answer one request together: in rounds every member drafts the next short segment,
every member scores every draft, the best one is appended and broadcast to all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import FusionConfig
from .engine import DEFAULT_MEMBERS, AsyncFusionStream, Ensemble, FusionStream
from .errors import (
    ChecksumError,
    ConfigError,
    InvalidRequestError,
    MemberError,
    ModelLoadError,
    NoActiveMembersError,
    NotSupportedYetError,
    SpecFuseError,
    SpecFuseValueError,
)
from .member import Draft, Member, MemberSession, SamplingParams, TokenScores
from .presets import PRESETS
from .trace import Candidate, FusionResult, MemberCall, MemberExit, MemberUsage, SegmentEvent, Timings

if TYPE_CHECKING:
    from .hf_member import HFMember
    from .remote import OpenAICompatibleMember

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MEMBERS",
    "PRESETS",
    "AsyncFusionStream",
    "Candidate",
    "ChecksumError",
    "ConfigError",
    "Draft",
    "Ensemble",
    "FusionConfig",
    "FusionResult",
    "FusionStream",
    "HFMember",
    "InvalidRequestError",
    "Member",
    "MemberCall",
    "MemberError",
    "MemberExit",
    "MemberSession",
    "MemberUsage",
    "ModelLoadError",
    "NoActiveMembersError",
    "NotSupportedYetError",
    "OpenAICompatibleMember",
    "SamplingParams",
    "SegmentEvent",
    "SpecFuseError",
    "SpecFuseValueError",
    "Timings",
    "TokenScores",
]


def __getattr__(name: str) -> Any:
    # HFMember imports torch and OpenAICompatibleMember needs httpx (the `remote` extra):
    # keep `import specfuse_core` light for the pure-Python parts.
    if name == "HFMember":
        from .hf_member import HFMember

        return HFMember
    if name == "OpenAICompatibleMember":
        from .remote import OpenAICompatibleMember

        return OpenAICompatibleMember
    raise AttributeError(f"module 'specfuse_core' has no attribute {name!r}")
