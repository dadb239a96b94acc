"""Stopping an engine server while a remote member is answering: shared by the llama.cpp and vLLM tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

SKY = [{"role": "user", "content": "Explain briefly why the sky is blue."}]


def answer_while_stopping(ensemble: Any, stop: Callable[[], None], delay: float) -> tuple[list[Any], Any]:
    """Stream an answer and call ``stop`` ``delay`` seconds after the first segment, while the next
    round's requests are in flight; returns the segment events and the result."""
    stream = ensemble.stream(SKY)
    events = [next(stream)]
    killer = threading.Timer(delay, stop)
    killer.start()
    events += list(stream)
    killer.join()
    return events, stream.result


def assert_exited_once(result: Any, member: str) -> None:
    """``member`` left the request once, with a remote error that names it."""
    exits = [x for x in result.exits if x.member == member]
    assert len(exits) == 1, result.exits
    assert exits[0].reason.startswith("Remote") and member in exits[0].reason, exits[0].reason
