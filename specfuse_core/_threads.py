"""Per-thread torch settings for :mod:`specfuse_core.scheduler`'s workers (imports torch)."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()


def set_thread_budget(threads: int) -> None:
    """Limit the calling thread's intra-op parallelism to ``threads``.

    OpenMP's team size (and MKL's local thread count) are per-thread settings, so this leaves other
    threads alone; but ``torch.set_num_threads`` also records ``threads`` as torch's process-wide
    default for threads that start later, so that default is put back from a short-lived thread whose
    own setting does not matter.
    """
    with _lock:
        default = _process_default()
        torch.get_num_threads()  # torch's lazy per-thread set-up first, or it would undo the budget later
        torch.set_num_threads(threads)
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="specfuse-threads")
        restore.start()
        restore.join()


def _process_default() -> int:
    box: list[int] = []
    probe = threading.Thread(target=lambda: box.append(torch.get_num_threads()), name="specfuse-threads")
    probe.start()
    probe.join()
    return box[0]


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` OpenMP threads on the calling thread, and put its count back after.

    This calls OpenMP's own ``omp_set_num_threads``, a per-thread setting: unlike ``torch.set_num_threads``
    it leaves torch's process-wide default (which threads that start meanwhile would take) alone. Where
    torch's OpenMP runtime cannot be reached that way, the block runs with the thread's own count.
    """
    before = torch.get_num_threads()
    set_count = _omp_set_num_threads() if threads != before else None
    if set_count is None:
        yield
        return
    set_count(threads)
    try:
        yield
    finally:
        set_count(before)


@functools.cache
def _omp_set_num_threads() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch uses, or ``None``; checked on a short-lived thread."""
    try:
        function = ctypes.CDLL(None).omp_set_num_threads
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], None
    seen: list[int] = []

    def probe() -> None:
        torch.get_num_threads()  # torch's lazy per-thread set-up first (it sets the count itself)
        function(1)
        seen.append(torch.get_num_threads())
        function(2)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=probe, name="specfuse-threads")
    thread.start()
    thread.join()
    return function if seen == [1, 2] else None


def use_own_cuda_stream(device: str) -> None:
    """Issue the calling thread's CUDA work on a stream of its own (members that share a GPU overlap)."""
    torch.cuda.set_stream(torch.cuda.Stream(device=device))
