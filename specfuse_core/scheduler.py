"""Where local members run their model work, with how many threads, and how concurrent requests share it.

Schedules (``Ensemble(..., schedule=...)``):

- ``"turns"``: members on one device share one worker thread and take turns; each step may use
  every core of the device (torch's own thread count).
- ``"parallel"``: every local member has its own worker thread with an explicit intra-op thread
  budget, so members draft and score side by side. On CPU the budgets split the cores in proportion to
  each member's parameter count (at least one each), unless a member was given ``threads=``; together
  they never exceed the cores. On CUDA each worker issues its work on its own CUDA stream.
- ``"auto"`` (default): ``parallel`` when two or more members share the CPU and there is a core for
  each, otherwise ``turns`` (members on different devices always run concurrently).

A worker runs *jobs*: generators that yield forward passes and receive their results. All jobs in
flight on a worker (one per concurrent request and member) advance in lockstep, and the passes of one
step that a :class:`BatchRunner` says may share a batch run as one padded forward pass. This module
has no torch import; :mod:`specfuse_core.hf_member` supplies the runner.

Thread budgets are set per worker thread (OpenMP's thread count is a per-thread setting), and torch's
process-wide default is put back afterwards. What only takes effect before torch loads OpenMP
(``OMP_WAIT_POLICY``) is set as a default when specfuse itself is the first to load torch: see
:func:`prefer_passive_openmp`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Callable, Generator, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from .errors import ConfigError

T = TypeVar("T")

Schedule = Literal["auto", "turns", "parallel"]
SCHEDULES: tuple[str, ...] = ("auto", "turns", "parallel")

Job = Generator[Any, Any, T]
"""A unit of model work: yields forward-pass requests, receives each one's result, returns a value."""


class BatchRunner(Protocol):
    """Runs a member's forward passes; says which passes of concurrent jobs may share one batch."""

    def batch_key(self, request: Any) -> Hashable:
        """Passes with equal keys (in one lockstep step) run as one batch."""
        ...

    def run_batch(self, requests: list[Any]) -> list[Any]:
        """Run the passes (as one batch when there are several) and return their results in order."""
        ...


class Schedulable(Protocol):
    """What the scheduler needs to know about a local member."""

    name: str

    @property
    def device_key(self) -> str: ...

    @property
    def cost(self) -> int:
        """Relative compute per token (its parameter count)."""
        ...

    @property
    def threads(self) -> int | None:
        """An explicit thread budget (``threads=``), or ``None``."""
        ...

    def use_worker(self, worker: Worker) -> None: ...


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask and, in a container, its CPU quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def split_threads(costs: Sequence[int], cores: int, fixed: Sequence[int | None] | None = None) -> list[int]:
    """Thread budgets: ``cores`` split in proportion to ``costs``, at least one each.

    ``fixed`` budgets (not ``None``) are kept as given and the rest share what they leave. The sum
    never exceeds ``cores`` unless there are more members than cores (then every one gets 1).
    """
    fixed = list(fixed) if fixed is not None else [None] * len(costs)
    budgets: list[int] = [f if f is not None else 0 for f in fixed]
    free = [i for i, f in enumerate(fixed) if f is None]
    left = max(len(free), cores - sum(b for b in budgets))
    if not free:
        return budgets
    weights = [max(1, costs[i]) for i in free]
    total = sum(weights)
    shares = [left * w / total for w in weights]
    floors = [max(1, math.floor(s)) for s in shares]
    remaining = left - sum(floors)
    for j in sorted(range(len(free)), key=lambda j: shares[j] - math.floor(shares[j]), reverse=True):
        if remaining <= 0:
            break
        floors[j] += 1
        remaining -= 1
    for j, i in enumerate(free):
        budgets[i] = floors[j]
    return budgets


def resolve_schedule(schedule: str, members: Sequence[Schedulable], cores: int) -> Literal["turns", "parallel"]:
    """What ``schedule`` means for these members on this machine (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule != "auto":
        return schedule  # type: ignore[return-value]
    on_cpu = [m for m in members if m.device_key == "cpu"]
    return "parallel" if 2 <= len(on_cpu) <= cores else "turns"


@dataclass(frozen=True)
class Placement:
    """Where one member runs: its worker's name and its thread budget (``None``: torch's default)."""

    member: str
    worker: str
    threads: int | None


_workers: dict[str, Worker] = {}
_warned_spinning = False
log = logging.getLogger("specfuse")
_workers_lock = threading.Lock()


def assign(members: Sequence[Schedulable], schedule: str = "auto", cores: int | None = None) -> list[Placement]:
    """Give each local member its worker under ``schedule`` and return where each one runs.

    A member shared by several ensembles runs where the latest ensemble put it; ensembles that place a
    shared member differently should not run at the same time (its threads would oversubscribe).
    """
    cores = cores or available_cores()
    resolved = resolve_schedule(schedule, members, cores)
    placements = _place(members, resolved, cores)
    _warn_if_spinning(placements, members)
    return placements


def _warn_if_spinning(placements: Sequence[Placement], members: Sequence[Schedulable]) -> None:
    global _warned_spinning
    on_cpu = {m.name for m in members if m.device_key == "cpu"}
    multi_threaded = any(p.member in on_cpu and p.threads != 1 for p in placements)
    if multi_threaded and openmp_spins() and not _warned_spinning:
        _warned_spinning = True
        log.warning("OpenMP threads may spin (OMP_WAIT_POLICY is not PASSIVE): multi-threaded CPU steps slow "
                    "down sharply while another process is busy; set OMP_WAIT_POLICY=PASSIVE before importing torch")  # fmt: skip


def _place(members: Sequence[Schedulable], resolved: str, cores: int) -> list[Placement]:
    placements: list[Placement] = []
    if resolved == "turns":
        for member in members:
            worker = _shared_worker(f"device:{member.device_key}", None, member.device_key)
            member.use_worker(worker)
            placements.append(Placement(member.name, worker.name, None))
        return placements
    on_cpu = [m for m in members if m.device_key == "cpu"]
    budgets = dict(
        zip((m.name for m in on_cpu), split_threads([m.cost for m in on_cpu], cores, [m.threads for m in on_cpu]))
    )
    for member in members:
        threads = budgets.get(member.name, member.threads)
        worker = _shared_worker(f"member:{member.name}:{id(member)}:{threads}", threads, member.device_key)
        member.use_worker(worker)
        placements.append(Placement(member.name, worker.name, threads))
    return placements


def describe(placements: Sequence[Placement]) -> str:
    """One line for logs and traces: ``smollm2 (own thread, 1 thread), qwen (own thread, 1 thread)``."""
    parts = []
    for p in placements:
        threads = "all cores" if p.threads is None else f"{p.threads} thread" + ("s" if p.threads > 1 else "")
        where = "shared device thread" if p.worker.startswith("device:") else "own thread"
        parts.append(f"{p.member} ({where}, {threads})")
    return ", ".join(parts) or "no local members"


def _shared_worker(name: str, threads: int | None, device_key: str) -> Worker:
    with _workers_lock:
        if name not in _workers:
            _workers[name] = Worker(name, threads=threads, device_key=device_key)
        return _workers[name]


def default_worker(device_key: str) -> Worker:
    """The worker a member uses before any ensemble placed it: the device's shared ``turns`` worker."""
    return _shared_worker(f"device:{device_key}", None, device_key)


@dataclass
class WorkerStats:
    """What a worker did: forward passes run, and how many jobs' passes they carried."""

    passes: int = 0
    batched_passes: int = 0
    largest_batch: int = 0


@dataclass
class _Entry:
    job: Job[Any]
    runner: BatchRunner
    future: asyncio.Future[Any]
    request: Any = None  # the pass the job asks for (None: not started yet), then that pass's _Result


class Worker:
    """One thread that runs model work, with its own intra-op thread budget.

    :meth:`call` runs a plain function on the thread; :meth:`submit` runs a job, batched with the
    jobs of other requests that are in flight at the same time.
    """

    def __init__(self, name: str, *, threads: int | None = None, device_key: str = "cpu") -> None:
        self.name = name
        self.threads = threads
        self.device_key = device_key
        self.stats = WorkerStats()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"specfuse-{name}", initializer=self._enter_thread
        )
        self._lock = threading.Lock()
        self._queue: list[_Entry] = []
        self._driving = False

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, threads={self.threads})"

    def _enter_thread(self) -> None:
        from . import _threads

        if self.threads is not None and self.device_key == "cpu":
            _threads.set_thread_budget(self.threads)
        if self.device_key.startswith("cuda") and self.name.startswith("member:"):
            _threads.use_own_cuda_stream(self.device_key)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` on this worker's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, job: Job[T], runner: BatchRunner) -> T:
        """Run ``job`` on this worker, in lockstep (and batched) with the other jobs in flight."""
        entry = _Entry(job, runner, asyncio.get_running_loop().create_future())
        with self._lock:
            self._queue.append(entry)
            start = not self._driving
            self._driving = True
        if start:
            self._executor.submit(self._drive)
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.future.cancel()  # the driver closes the job at its next step
            raise

    # -- the driver (on the worker thread) --------------------------------------------------------

    def _drive(self) -> None:
        active: list[_Entry] = []
        while True:
            with self._lock:
                active.extend(self._queue)
                self._queue.clear()
                if not active:
                    self._driving = False
                    return
            active = [e for e in active if self._advance(e)]
            if active:
                self._step(active)

    def _step(self, active: list[_Entry]) -> None:
        """Run the pending pass of every active job, one batch per batch key."""
        groups: dict[tuple[int, Hashable], list[_Entry]] = {}
        for entry in active:
            groups.setdefault((id(entry.runner), entry.runner.batch_key(entry.request)), []).append(entry)
        for group in groups.values():
            runner = group[0].runner
            try:
                results = runner.run_batch([e.request for e in group])
            except BaseException as error:  # noqa: BLE001 - a failed pass fails its jobs, not the worker
                for entry in group:
                    self._fail(entry, error)
                    entry.request = _DONE
                continue
            self.stats.passes += 1
            self.stats.batched_passes += len(group) > 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
            for entry, result in zip(group, results):
                entry.request = _Result(result)
        active[:] = [e for e in active if e.request is not _DONE]

    def _advance(self, entry: _Entry) -> bool:
        """Start a job, or send it its last pass's result; keep it while it asks for another pass."""
        if entry.future.cancelled():
            entry.job.close()
            return False
        try:
            sent = None if entry.request is None else entry.request.value
            entry.request = entry.job.send(sent)
            return True
        except StopIteration as stop:
            self._resolve(entry, stop.value)
        except BaseException as error:  # noqa: BLE001 - the job's own error goes to its caller
            self._fail(entry, error)
        return False

    @staticmethod
    def _resolve(entry: _Entry, value: Any) -> None:
        entry.future.get_loop().call_soon_threadsafe(_set_result, entry.future, value)

    @staticmethod
    def _fail(entry: _Entry, error: BaseException) -> None:
        entry.future.get_loop().call_soon_threadsafe(_set_exception, entry.future, error)


@dataclass(frozen=True)
class _Result:
    value: Any


_DONE = object()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def prefer_passive_openmp() -> None:
    """Make OpenMP threads sleep at once when idle instead of spinning (``OMP_WAIT_POLICY=PASSIVE``),
    unless the environment already says otherwise (that is the way out: set ``OMP_WAIT_POLICY``).

    Spinning threads are what make a multi-threaded step collapse when another process holds a core
    (measured: a 16-token answer of one member took 6.8 s instead of 1.3 s, two at once 41 s instead of
    1.9 s). The policy is read once, when torch loads OpenMP, so this only helps before ``import
    torch``: the ``specfuse`` command calls it first thing, and loading a local member calls it when
    torch is not loaded yet. A program that imports torch earlier sets the variable itself.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def openmp_spins() -> bool:
    """Whether OpenMP threads of this process may spin while idle (the policy was not made passive)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"
