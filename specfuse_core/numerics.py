"""How local members compute: the dtype ``"auto"`` picks, and bfloat16 on CPU made exact where it can be.

bfloat16 on CPU rounds a row's result differently depending on how the row is computed: SDPA
attention sums in another order over a cached prefix than in one pass, and a matrix product of a
single row takes a GEMV path whose summation order differs from the many-row path. Eager attention,
and computing a single row as two (the second all zeros), make a greedy answer the same with and
without the KV cache. A left-padded batch of concurrent requests still sums attention in another
order than the row alone (measured on Qwen2.5-Coder-0.5B: up to 0.19 in a logit unless the padding
is a multiple of 16), so in bf16 a concurrent answer can part from the one alone at a near-tie vote;
float32 keeps them equal (tests/batch_equality.py). Scores are float32 in every dtype: logits are cast
to float32 before each log-softmax.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import ConfigError

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
    decode steps) and two-row products: bf16 on CPU."""
    return dtype == torch.bfloat16 and device.startswith("cpu")


KERNEL_CACHE_CAPACITY = "64"
"""Entries in each of oneDNN's per-shape kernel caches (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, and
ideep's ``LRU_CACHE_CAPACITY`` inside torch); both default to 1024. A bf16 kernel is cached per
shape, and prompt lengths vary from request to request, so at 1024 a server's memory grew for
hundreds of requests (+40% over 600 requests of two tiny members); at 64 it stays flat (+0.4%)."""


def bound_kernel_caches() -> None:
    """Give oneDNN's kernel caches :data:`KERNEL_CACHE_CAPACITY` entries unless the environment sets
    them. They read the variables when the first bf16 kernel runs, so call this before that."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, KERNEL_CACHE_CAPACITY)


def make_rows_independent(model: Any) -> None:
    """Compute every linear layer's single-row input as two rows, so that one row goes through the
    same kernel as a batch of rows (for bf16 on CPU the two cost about the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = _as_two_rows(module.forward)


def _as_two_rows(forward: Any) -> Any:
    def forward_two_rows(x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 2 and x.numel() == x.shape[-1]:
            return forward(torch.cat([x, torch.zeros_like(x)], dim=-2)).narrow(-2, 0, 1)
        return forward(x)

    return forward_two_rows
