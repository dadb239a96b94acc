"""Per-thread torch settings for :mod:`specfuse_core.scheduler`'s workers (imports torch)."""

from __future__ import annotations

import threading

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


def use_own_cuda_stream(device: str) -> None:
    """Issue the calling thread's CUDA work on a stream of its own (members that share a GPU overlap)."""
    torch.cuda.set_stream(torch.cuda.Stream(device=device))
