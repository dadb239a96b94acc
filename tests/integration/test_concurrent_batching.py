"""Concurrent requests on one ensemble share batched forward passes, and answer exactly as alone.

Two tiny random models with different tokenizers, built in the test; greedy decoding throughout, in
float32 and in bfloat16 ("as alone" in each dtype: see tests/batch_equality.py).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from batch_equality import assert_answers_as_alone
from specfuse_core import Ensemble, FusionConfig, HFMember

PROMPTS = [
    "Where is Paris?",
    "Name three colors of the rainbow, in order, and say why they appear.",
    "Hi",
    "What is two plus two? Explain slowly.",
    "Tell me about the moon and the tides.",
    "Why?",
    "Write one line about the sea.",
    "Count from one to five, please, in words.",
]
CONFIG = FusionConfig(segment_tokens=4, max_tokens=32, temperature=0)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def ensemble(tiny_dirs, request):
    """Both dtypes on every machine: ``auto`` picks bfloat16 only on CPUs with native bf16."""
    a, b = tiny_dirs
    members = [HFMember(str(a), name="tiny-a", dtype=request.param), HFMember(str(b), name="tiny-b", dtype=request.param)]
    return Ensemble(members, CONFIG, schedule="parallel")


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def concurrently(ensemble: Ensemble, prompts: list[str]) -> list:
    async def together():
        return await asyncio.gather(*(ensemble.agenerate(messages(p)) for p in prompts))

    return asyncio.run(together())


def assert_same_answer(alone, together, ensemble: Ensemble) -> None:
    assert_answers_as_alone(alone, together, ensemble.members[0].model.dtype)


@pytest.mark.parametrize("concurrency", [4, 8])
def test_concurrent_greedy_requests_equal_each_request_alone_and_share_passes(ensemble, concurrency):
    prompts = PROMPTS[:concurrency]
    alone = [ensemble.generate(messages(p)) for p in prompts]
    before = {m.name: m.worker.stats.batched_passes for m in ensemble.members}
    together = concurrently(ensemble, prompts)
    for one, other in zip(alone, together):
        assert_same_answer(one, other, ensemble)
    for member in ensemble.members:
        assert member.worker.stats.batched_passes > before[member.name]
        assert member.worker.stats.largest_batch >= 2
    assert ensemble.open_sessions == 0


def test_turns_and_parallel_schedules_give_the_same_answers(tiny_dirs):
    a, b = tiny_dirs
    answers = {}
    for schedule in ("turns", "parallel"):
        members = [HFMember(str(a), name="tiny-a"), HFMember(str(b), name="tiny-b")]
        ensemble = Ensemble(members, CONFIG, schedule=schedule)
        workers = {m.worker for m in members}
        assert len(workers) == (1 if schedule == "turns" else 2)
        answers[schedule] = [ensemble.generate(messages(p)).text for p in PROMPTS[:3]]
    assert answers["turns"] == answers["parallel"]


def test_parallel_budgets_apply_to_the_worker_threads_only(tiny_dirs):
    a, b = tiny_dirs
    caller_threads = torch.get_num_threads()
    members = [HFMember(str(a), name="tiny-a", threads=1), HFMember(str(b), name="tiny-b", threads=1)]
    ensemble = Ensemble(members, CONFIG, schedule="parallel")
    assert [p.threads for p in ensemble.placements] == [1, 1]
    inside = [asyncio.run(m.worker.call(torch.get_num_threads)) for m in members]
    fresh: list[int] = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert inside == [1, 1]
    assert torch.get_num_threads() == caller_threads and fresh == [caller_threads]  # nothing global changed


def test_a_request_closed_mid_stream_leaves_the_others_identical(ensemble):
    prompts = PROMPTS[:3]
    alone = [ensemble.generate(messages(p)) for p in prompts]

    async def scenario():
        async def stop_early():
            stream = ensemble.astream(messages(PROMPTS[4]))
            async for _ in stream:
                break
            await stream.aclose()

        results = await asyncio.gather(stop_early(), *(ensemble.agenerate(messages(p)) for p in prompts))
        return results[1:]

    for one, other in zip(alone, asyncio.run(scenario())):
        assert_same_answer(one, other, ensemble)
    assert ensemble.open_sessions == 0


def test_bad_thread_budget_is_a_config_error(tiny_dirs):
    from specfuse_core import ConfigError

    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        HFMember(str(tiny_dirs[0]), threads=0)


@pytest.mark.parametrize(
    ("preamble", "env_value", "expected"),
    [
        ("", None, "PASSIVE"),  # specfuse loads torch first: idle OpenMP threads sleep
        ("", "ACTIVE", "ACTIVE"),  # the user's own setting wins
        ("import torch; ", None, "unset"),  # torch already loaded: too late, nothing is changed
    ],
)
def test_openmp_wait_policy_is_made_passive_only_before_torch_loads(preamble, env_value, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = preamble + "import os, specfuse_core.hf_member; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
