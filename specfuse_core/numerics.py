"""How local members compute: the dtype ``"auto"`` picks, and bfloat16 on CPU made exact where it can be.

bfloat16 on CPU rounds a row's result differently depending on how the row is computed: SDPA
attention sums in another order over a cached prefix than in one pass, and a matrix product of a
single row takes a GEMV path whose summation order differs from the many-row path. Eager attention,
and padding a single row with zero rows (:class:`PackedLinear`), make a greedy answer the same with
and without the KV cache. A left-padded batch of concurrent requests still sums attention in another
order than the row alone (measured on Qwen2.5-Coder-0.5B: up to 0.19 in a logit unless the padding
is a multiple of 16), so in bf16 a concurrent answer can part from the one alone at a near-tie vote;
float32 keeps them equal (tests/batch_equality.py). Scores are float32 in every dtype: logits are cast
to float32 before each log-softmax.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import torch

from .errors import ConfigError, NotSupportedYetError

DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def default_dtype(device: str) -> torch.dtype:
    """The dtype of ``dtype="auto"``: bfloat16 on GPUs and on CPUs with native bf16, float32 elsewhere."""
    if device.startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if device.startswith("cpu") and cpu_has_native_bf16() else torch.float32


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """The torch dtype for a ``dtype`` option (a name, an alias such as ``bf16``, ``"auto"`` or ``None``)."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, DTYPE_ALIASES.get(dtype, dtype), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def default_device() -> str:
    """The device a local member loads on when none is given."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def needs_exact_rows(dtype: torch.dtype, device: str) -> bool:
    """Whether a model in ``dtype`` on ``device`` needs eager attention (about as fast as SDPA for
    decode steps) for its rows to come out the same with and without the KV cache: bf16 on CPU.
    Batch-independent products are :func:`make_rows_independent`'s job."""
    return dtype == torch.bfloat16 and device.startswith("cpu")


PACKED_DTYPES = (torch.float32, torch.bfloat16)
"""The dtypes whose linear layers a CPU member keeps prepacked (:class:`PackedLinear`)."""


def packs_linear_layers(dtype: torch.dtype, device: str) -> bool:
    """Whether a model in ``dtype`` on ``device`` gets :func:`make_rows_independent`: float32 and
    bfloat16 on CPU."""
    return dtype in PACKED_DTYPES and device.startswith("cpu")


KERNEL_CACHE_CAPACITY = "64"
"""Entries in each of oneDNN's per-shape kernel caches (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, and
ideep's ``LRU_CACHE_CAPACITY`` inside torch); both default to 1024. A oneDNN kernel (every
:class:`PackedLinear` product) is cached per shape, and prompt lengths vary from request to request,
so at 1024 a server's memory grew for hundreds of requests (+40% over 600 requests of two tiny
members); at 64 it stays flat (+0.4%)."""


def bound_kernel_caches() -> None:
    """Give oneDNN's kernel caches :data:`KERNEL_CACHE_CAPACITY` entries unless the environment sets
    them. They read the variables when the first oneDNN kernel runs, so call this before that."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, KERNEL_CACHE_CAPACITY)


def make_rows_independent(model: Any) -> None:
    """Make every float32 or bfloat16 linear layer's result for a row independent of the batch the
    row is in, and faster: on CPU, where torch has oneDNN, each becomes a :class:`PackedLinear`.
    Without oneDNN a bf16 layer computes a single-row input as two rows instead, so that one row goes
    through the same kernel as a batch of rows (float32 layers stay as they are)."""
    packing = packed_linear_available()
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or module.weight.device.type != "cpu":
            continue
        if packing and module.weight.dtype in PACKED_DTYPES:
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, PackedLinear(module))
        elif module.weight.dtype == torch.bfloat16:
            module.forward = _as_two_rows(module.forward)
    release_freed_memory()


ALL_THREADS_MIN_PARAMS = 1_000_000_000
"""From this many parameters on, every CPU pass of a member uses all its threads (see :func:`pass_threads`)."""

ALL_THREADS_MIN_WORK = 20_000_000_000
"""Token positions times parameters from which a multi-token CPU pass uses all threads (see :func:`pass_threads`)."""


def pass_threads(threads: int, *, params: int, positions: int, width: int) -> int:
    """How many of ``threads`` OpenMP threads a CPU forward pass should use when idle OpenMP threads
    sleep (``OMP_WAIT_POLICY=PASSIVE``, specfuse's default): ``positions`` token positions in all,
    ``width`` per row (1: a decode step), through a model of ``params`` parameters.

    Each parallel region then has to wake the other threads, and a pass of a small model has hundreds of
    short ones. Measured on the 2-core development CPU (bf16, on a worker thread), one thread against two:
    a SmolLM2-135M decode step 43 vs 84 ms, Qwen2.5-Coder-0.5B 81 vs 88 ms; 1.5B and 3B models (random
    weights) 239 vs 205 and 379 vs 313 ms. Passes of many positions gain from the second thread: Qwen's
    prefill of 32 positions 171 vs 135 ms, SmolLM's of 512 904 vs 731 ms, but of 128 212 vs 258 ms
    (``benchmarks/rounds.py --part threads``).
    So a member under :data:`ALL_THREADS_MIN_PARAMS` computes decode steps on one thread, and multi-token
    passes too unless positions × parameters reach :data:`ALL_THREADS_MIN_WORK`. A decode step's choice
    depends on the model alone, never on how many requests share the batch (float32 attention over a
    cache rounds differently on one thread than on two; multi-token passes come out the same).
    """
    if threads <= 1 or params >= ALL_THREADS_MIN_PARAMS:
        return threads
    if width > 1 and positions * params >= ALL_THREADS_MIN_WORK:
        return threads
    return 1


def release_freed_memory() -> None:
    """Hand the memory that replacing the layers freed back to the OS. glibc keeps freed blocks in
    its heap (measured: Qwen2.5-Coder-0.5B in bf16 held 2.26 GB after the load, 1.6 GB with this)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def packed_linear_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear operators."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


PACKED_MIN_ROWS = 4
"""Rows a :class:`PackedLinear` computes at least (measured on AVX512-BF16 without AMX: 3-6 rows
cost about the same and less than 1, 2 or 8; see ``benchmarks/README.md``)."""


class PackedLinear(torch.nn.Module):
    """A float32 or bfloat16 linear layer on CPU whose weight is stored once in oneDNN's blocked layout.

    ``torch.nn.Linear`` hands oneDNN the plain (row-major) weight on every call, and its bf16 kernel
    reads that layout at about half the speed of the blocked one it is reordered into here, once
    (float32 products go to MKL, which gains less: Qwen2.5-Coder-0.5B's one-thread step 1.2×, a
    batch of 8 rows 1.9×).
    Fewer than :data:`PACKED_MIN_ROWS` rows are padded with zero rows up to it: one row alone takes
    another kernel path for some shapes, which rounds differently from the same row in a batch, and
    four rows read the weights faster than one or two (a bf16 decode step of Qwen2.5-Coder-0.5B: 66
    ms with four, 88 ms with two, on one thread). Every row's result is independent of the batch it
    is in, in both dtypes (torch's float32 ``nn.Linear`` rounds a row alone differently from the
    same row in a batch).
    The layer replaces the original module; a weight tied to the input embedding stays there too, so a
    tied output layer costs its size once more in memory.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight), persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows >= PACKED_MIN_ROWS:
            return self._product(x)
        flat = x.reshape(rows, x.shape[-1])
        padded = torch.cat([flat, flat.new_zeros(PACKED_MIN_ROWS - rows, x.shape[-1])])
        return self._product(padded)[:rows].reshape(*x.shape[:-1], self.out_features)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"

    def _apply(self, fn: Any, recurse: bool = True) -> PackedLinear:
        raise NotSupportedYetError(
            "a local member's linear layers are prepacked for this CPU and dtype and cannot be moved or "
            "cast (model.to/float/half/cuda): load the member with the device= and dtype= you want instead"
        )


def _as_two_rows(forward: Any) -> Any:
    def forward_two_rows(x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 2 and x.numel() == x.shape[-1]:
            return forward(torch.cat([x, torch.zeros_like(x)], dim=-2)).narrow(-2, 0, 1)
        return forward(x)

    return forward_two_rows
