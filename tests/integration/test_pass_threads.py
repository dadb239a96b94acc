"""Small CPU passes on one OpenMP thread while idle OpenMP threads sleep (numerics.pass_threads).

A tiny random member on a worker without a thread budget of its own (the ``turns`` schedule), with
torch at two threads: its passes run on one thread under ``OMP_WAIT_POLICY=PASSIVE`` and on both
otherwise, with the same draft, and neither the worker's count nor torch's process-wide default moves.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from specfuse_core import HFMember
from specfuse_core._threads import _process_default
from specfuse_core.member import SamplingParams
from specfuse_core.numerics import ALL_THREADS_MIN_PARAMS, ALL_THREADS_MIN_WORK, pass_threads
from specfuse_core.scheduler import Worker

MESSAGES = [{"role": "user", "content": "Where is Paris?"}]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, seed=None)


def test_the_rule_keeps_small_members_on_one_thread_and_gives_large_passes_all():
    smol, qwen, big = 134_515_008, 494_032_768, ALL_THREADS_MIN_PARAMS
    assert pass_threads(2, params=smol, positions=1, width=1) == 1
    assert pass_threads(2, params=smol, positions=64, width=64) == 1
    assert pass_threads(2, params=smol, positions=512, width=512) == 2
    assert pass_threads(2, params=smol, positions=128, width=128) == 1  # measured faster on one thread
    assert pass_threads(2, params=qwen, positions=8, width=1) == 1  # 8 decode steps: still one each
    assert pass_threads(2, params=qwen, positions=12, width=12) == 1
    assert pass_threads(2, params=630_167_424, positions=32, width=32) == 2  # Qwen as loaded: prefill of 32
    assert pass_threads(2, params=qwen, positions=96, width=12) == 2  # 8 requests' scoring in one batch
    assert pass_threads(2, params=big, positions=1, width=1) == 2
    assert pass_threads(1, params=smol, positions=10**6, width=10**6) == 1
    # A decode step's count depends on the model alone, however many requests share the batch.
    assert pass_threads(8, params=qwen, positions=ALL_THREADS_MIN_WORK, width=1) == 1


def _counting_threads(member: HFMember) -> list[int]:
    seen: list[int] = []
    # every forward pass embeds its tokens first, through transformers' forward and the lean one alike
    member.model.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    return seen


@pytest.fixture
def two_threads():
    before = _process_default()
    torch.set_num_threads(2)  # the worker thread below starts with torch's default: two threads
    yield
    torch.set_num_threads(before)


def _draft_on_own_worker(member: HFMember, worker_name: str) -> tuple[str, Worker]:
    worker = Worker(worker_name)  # no budget of its own: the kind of worker the `turns` schedule uses
    member.use_worker(worker)

    async def draft() -> str:
        session = await member.open_session(MESSAGES)  # the prompt's prefill, then decode steps
        return (await session.draft(12, GREEDY)).text

    return asyncio.run(draft()), worker


@pytest.mark.parametrize(("policy", "expected"), [("PASSIVE", 1), ("ACTIVE", 2)])
def test_a_tiny_members_passes_run_on_one_thread_only_when_openmp_threads_sleep(
    tiny_dirs, two_threads, monkeypatch, policy, expected
):
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)  # read per pass (scheduler.openmp_spins)
    member = HFMember(str(tiny_dirs[0]), name="tiny")
    seen = _counting_threads(member)
    text, worker = _draft_on_own_worker(member, f"test-pass-threads-{policy}")
    assert text and len(seen) > 2
    assert set(seen) == {expected}
    assert asyncio.run(worker.call(torch.get_num_threads)) == 2  # the worker's own count is back
    assert _process_default() == 2


def test_one_thread_and_two_give_the_same_draft(tiny_dirs, two_threads, monkeypatch):
    drafts = []
    for policy in ("PASSIVE", "ACTIVE"):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        # bfloat16 (eager attention): the same on any thread count. In float32, SDPA's decode step
        # rounds differently on one thread than on two; pass_threads picks a decode step's count by
        # the model alone, so a request alone and in a batch still compute alike.
        member = HFMember(str(tiny_dirs[1]), name="tiny-b", dtype="bfloat16")
        drafts.append(_draft_on_own_worker(member, f"test-same-draft-{policy}")[0])
    assert drafts[0] == drafts[1] and drafts[0]


def test_a_packed_members_cost_is_its_parameter_count(tiny_dirs):
    from transformers import AutoModelForCausalLM

    member = HFMember(str(tiny_dirs[0]), name="tiny", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dirs[0]))
    assert member.cost == sum(p.numel() for p in plain.parameters())
