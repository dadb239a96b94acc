"""Small operations on transformers' ``DynamicCache`` used by :mod:`specfuse_core.hf_member`.

The cache is always built without a model config, so every layer is a plain, croppable
``DynamicLayer`` (sliding-window models still mask correctly from the full cache).
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def cache_length(cache: DynamicCache | None) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers if getattr(layer, "keys", None) is not None]


def crop(cache: DynamicCache, length: int) -> None:
    """Drop everything after the first ``length`` positions, in place."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def forward_with_cache(model: torch.nn.Module, input_ids: torch.Tensor, cache: DynamicCache, logits_to_keep: int) -> tuple[torch.Tensor, DynamicCache]:
    """One forward pass on top of ``cache``; returns the kept logits and the grown cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache``; both spellings are supported.
    """
    keyword = _cache_keyword(type(model))
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=logits_to_keep, **{keyword: cache})
    grown = getattr(out, "cache", None)
    return out.logits, grown if grown is not None else out.past_key_values


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def expanded_prefix(cache: DynamicCache, length: int, batch: int) -> DynamicCache:
    """A new cache holding the first ``length`` positions repeated ``batch`` times. ``cache`` is untouched."""
    data = [
        (k[:, :, :length].expand(batch, -1, -1, -1).contiguous(), v[:, :, :length].expand(batch, -1, -1, -1).contiguous())
        for k, v in _layers(cache)
    ]
    return DynamicCache(ddp_cache_data=data)


def select_row(cache: DynamicCache, row: int, length: int) -> DynamicCache:
    """A new batch-1 cache with row ``row`` of a batched cache, cut to ``length`` positions."""
    data = [(k[row : row + 1, :, :length].clone(), v[row : row + 1, :, :length].clone()) for k, v in _layers(cache)]
    return DynamicCache(ddp_cache_data=data)
