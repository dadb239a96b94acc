"""What the scheduler does with one long prompt among short requests (tiny random models).

One request brings a 4,000-token prompt; three others, with a short one, arrive once it is being read. A member's worker runs
the requests' forward passes in lockstep, and the long prompt's prefill comes in chunks of
``PREFILL_CHUNK`` tokens, one chunk per step: so the short requests' decode steps run between the
chunks, and each short request gets its first segment while the long prompt is still being read. (One
unchunked 4,000-token pass would hold every short request back until it is done.) The test reads the
order of the forward passes; it makes no timing assertion.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from specfuse_core import Ensemble, FusionConfig
from specfuse_core.hf_member import PREFILL_CHUNK, HFMember, _ForwardRunner

WORDS = "one two three four five six seven eight nine ten "  # 30 tokens of the tiny tokenizers


def test_short_requests_get_their_first_segment_while_a_long_prompt_is_read(tiny_dirs, monkeypatch):
    log: list[tuple[str, str]] = []  # ("long-chunk", member) for each chunk of the long prefill; ("first", request)
    lock = threading.Lock()
    original = _ForwardRunner.run_batch

    def logged(self: _ForwardRunner, requests: list[Any]) -> list[Any]:
        widths = [len(r.rows[0]) for r in requests]
        with lock:
            log.extend(("long-chunk", self.member.name) for width in widths if width > _ForwardRunner.SHORT)
        return original(self, requests)

    monkeypatch.setattr(_ForwardRunner, "run_batch", logged)
    members = [HFMember(d, context_window=8192) for d in tiny_dirs]  # the tiny models' own window is 2048
    # segment_tokens 4 and max_tokens 8: a short first round is a handful of steps; greedy for repeatability.
    ensemble = Ensemble(members, FusionConfig(temperature=0, segment_tokens=4, max_tokens=8))
    long_question = [{"role": "user", "content": WORDS * 134}]
    prompts = {m.name: len(m.prompt_ids(long_question)) for m in members}
    assert 3900 < prompts[members[0].name] < 4300  # in the other tokenizer: about 2,100

    async def first_segment(messages: list[dict[str, str]], label: str) -> None:
        async with ensemble.astream(messages) as stream:
            async for _event in stream:
                with lock:
                    log.append(("first", label))
                return

    async def main() -> None:
        short = [[{"role": "user", "content": f"Question {i}: say hello."}] for i in range(3)]
        long = asyncio.ensure_future(first_segment(long_question, "long"))
        while not any(kind == "long-chunk" for kind, _ in log):  # the short ones arrive while it is read
            await asyncio.sleep(0.001)
        await asyncio.gather(long, *(first_segment(q, f"short-{i}") for i, q in enumerate(short)))

    asyncio.run(main())
    firsts = {label: index for index, (kind, label) in enumerate(log) if kind == "first"}
    for member in members:  # every member read the long prompt in chunks
        chunks = [index for index, (kind, name) in enumerate(log) if kind == "long-chunk" and name == member.name]
        assert len(chunks) == -(-prompts[member.name] // PREFILL_CHUNK)
    chunks = [index for index, (kind, _) in enumerate(log) if kind == "long-chunk"]
    for i in range(3):
        read = sum(index < firsts[f"short-{i}"] for index in chunks)
        assert read < len(chunks), f"short-{i} waited until all {len(chunks)} chunks of the long prompt were read"
    assert firsts["long"] > max(firsts[f"short-{i}"] for i in range(3))


@pytest.mark.parametrize("chunk", ["whole", -1, 0, 1, 7])
def test_a_prompt_read_in_chunks_continues_as_one_read_at_once(tiny_dirs, monkeypatch, chunk):
    """Greedy drafts after a chunked prefill equal the model's own greedy continuation of the prompt,
    whatever the chunk size (one chunk; chunks ending one token before, at and after the prompt; many)."""
    import torch

    from specfuse_core import hf_member
    from specfuse_core.member import SamplingParams

    member = HFMember(tiny_dirs[0], context_window=8192)
    question = [{"role": "user", "content": WORDS * 20}]
    ids = member.prompt_ids(question)
    size = {"whole": len(ids), -1: len(ids) - 1, 0: len(ids) // 2, 1: len(ids) + 1, 7: 7}[chunk]
    monkeypatch.setattr(hf_member, "PREFILL_CHUNK", size)

    async def draft() -> Any:
        session = await member.open_session(question, cache=True, seed=None)
        try:
            return await session.draft(8, SamplingParams(temperature=0, top_p=1.0, seed=None))
        finally:
            await session.aclose()

    drafted = asyncio.run(draft())
    with torch.inference_mode():
        reference = member.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    continuation = member.decode(reference[0, len(ids) :].tolist())
    assert drafted.text and continuation.startswith(drafted.text)
