"""The scheduler without torch: thread budgets, the schedule choice, and the worker's lockstep batching."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest

from specfuse_core import ConfigError
from specfuse_core.scheduler import Worker, assign, resolve_schedule, split_threads


@dataclass
class FakeMember:
    name: str
    device_key: str = "cpu"
    cost: int = 1
    threads: int | None = None
    worker: Worker | None = None

    def use_worker(self, worker: Worker) -> None:
        self.worker = worker


def test_split_threads_is_proportional_at_least_one_and_never_oversubscribes():
    assert split_threads([135, 494], 2) == [1, 1]
    assert split_threads([135, 494], 16) == [3, 13]
    assert split_threads([1, 1, 1], 8) in ([3, 3, 2], [3, 2, 3], [2, 3, 3])
    assert sum(split_threads([5, 7, 11, 13], 10)) == 10
    assert split_threads([1, 1, 1], 2) == [1, 1, 1]  # more members than cores: one each
    assert split_threads([100, 1], 4, fixed=[None, 3]) == [1, 3]  # an explicit budget is kept


def test_auto_is_parallel_only_with_a_core_for_each_cpu_member():
    two = [FakeMember("a"), FakeMember("b")]
    assert resolve_schedule("auto", two, cores=2) == "parallel"
    assert resolve_schedule("auto", two, cores=1) == "turns"
    assert resolve_schedule("auto", [FakeMember("a")], cores=8) == "turns"
    assert resolve_schedule("auto", [FakeMember("a", "cuda:0"), FakeMember("b", "cuda:0")], cores=8) == "turns"
    assert resolve_schedule("turns", two, cores=8) == "turns"
    with pytest.raises(ConfigError, match="schedule must be one of"):
        resolve_schedule("fast", two, cores=2)


def test_assign_gives_parallel_members_their_own_workers_and_turns_members_one():
    a, b = FakeMember("a", cost=1), FakeMember("b", cost=3)
    placements = assign([a, b], "parallel", cores=4)
    assert a.worker is not b.worker and (a.worker.threads, b.worker.threads) == (1, 3)
    assert [p.threads for p in placements] == [1, 3]
    assign([a, b], "turns", cores=4)
    assert a.worker is b.worker and a.worker.threads is None


@dataclass(frozen=True)
class Pass:
    job: str
    width: int


@dataclass
class RecordingRunner:
    """Runs passes by echoing them; records which passes shared a batch."""

    batches: list[list[Pass]] = field(default_factory=list)
    fail_on: str | None = None

    def batch_key(self, request: Pass) -> Hashable:
        return request.width

    def run_batch(self, requests: list[Pass]) -> list[Any]:
        if any(r.job == self.fail_on for r in requests):
            raise RuntimeError("the device fell over")
        self.batches.append(list(requests))
        return [f"{r.job}:{r.width}" for r in requests]


def job(name: str, widths: list[int]) -> Generator[Pass, Any, list[str]]:
    seen = []
    for width in widths:
        seen.append((yield Pass(name, width)))
    return seen


def test_concurrent_jobs_advance_in_lockstep_and_share_batches_by_key():
    worker, runner, release = Worker("test-lockstep"), RecordingRunner(), threading.Event()

    async def main():
        busy = asyncio.ensure_future(worker.call(lambda: release.wait(5)))  # all three queue up meanwhile
        jobs = asyncio.gather(
            worker.submit(job("x", [3, 1, 1]), runner),
            worker.submit(job("y", [3, 1, 1, 1]), runner),
            worker.submit(job("z", [1]), runner),
        )
        await asyncio.sleep(0.05)
        release.set()
        await busy
        return await jobs

    x, y, z = asyncio.run(main())
    assert x == ["x:3", "x:1", "x:1"] and y == ["y:3", "y:1", "y:1", "y:1"] and z == ["z:1"]
    shapes = [sorted(p.job for p in batch) for batch in runner.batches]
    assert ["x", "y"] in shapes and ["z"] in shapes  # first step: the two width-3 passes together, z alone
    assert len(runner.batches) <= 5
    assert worker.stats.largest_batch == 2 and worker.stats.batched_passes >= 2


def test_a_failing_pass_fails_its_jobs_only_and_the_worker_keeps_serving():
    worker, runner = Worker("test-failure"), RecordingRunner(fail_on="bad")

    async def main():
        return await asyncio.gather(
            worker.submit(job("bad", [2]), runner), worker.submit(job("good", [1, 1]), runner), return_exceptions=True
        )

    bad, good = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and good == ["good:1", "good:1"]
    assert asyncio.run(worker.submit(job("later", [1]), runner)) == ["later:1"]


def test_an_error_inside_a_job_reaches_its_caller():
    def broken() -> Generator[Pass, Any, None]:
        yield Pass("b", 1)
        raise ValueError("context window full")

    with pytest.raises(ValueError, match="context window full"):
        asyncio.run(Worker("test-job-error").submit(broken(), RecordingRunner()))


def test_a_cancelled_request_closes_its_job_at_the_next_step():
    worker, closed, release = Worker("test-cancel"), threading.Event(), threading.Event()

    class SlowRunner(RecordingRunner):
        def run_batch(self, requests):
            release.wait(5)
            return super().run_batch(requests)

    def endless() -> Generator[Pass, Any, None]:
        try:
            while True:
                yield Pass("endless", 1)
        finally:
            closed.set()

    async def main():
        task = asyncio.ensure_future(worker.submit(endless(), SlowRunner()))
        await asyncio.sleep(0.05)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed.wait(5)


def test_call_runs_on_the_worker_thread():
    worker = Worker("test-call")
    name = asyncio.run(worker.call(lambda: threading.current_thread().name))
    assert name.startswith("specfuse-test-call")


def test_describe_says_where_each_member_runs():
    from specfuse_core.scheduler import Placement, describe

    placements = [Placement("smol", "member:smol:1:1", 1), Placement("qwen", "device:cpu", None)]
    assert describe(placements) == "smol (own thread, 1 thread), qwen (shared device thread, all cores)"
    assert describe([]) == "no local members"
