"""Small operations on transformers' ``DynamicCache`` used by :mod:`specfuse_core.hf_member`.

The cache is always built without a model config, so every layer is a plain, croppable
``DynamicLayer`` (sliding-window models still mask correctly from the full cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

if TYPE_CHECKING:
    from .forward import ModelForward


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


def forward_batched(
    forward: ModelForward, passes: list[tuple[list[list[int]], DynamicCache | None, int]], pad_id: int
) -> list[tuple[torch.Tensor, DynamicCache]]:
    """Several independent forward passes (of concurrent requests) as one padded batch.

    Each pass is ``(rows, cache, logits_to_keep)``: equal-length token rows on top of a cache with
    one row per token row (or an empty cache), and how many of the last positions' logits it needs. Caches are padded on
    the left to the longest and masked; token rows are padded on the right (causal attention never
    looks ahead at them). Each pass gets back its own logits and its own cache, without any padding.
    """
    if len(passes) == 1:
        rows, cache, keep = passes[0]
        tensor = torch.tensor(rows, dtype=torch.long, device=forward.device)
        return [forward(tensor, cache if cache is not None else new_cache(), keep)]
    device = forward.device
    prefix_lengths = [cache_length(cache) for _, cache, _ in passes]
    widths = [len(rows[0]) for rows, _, _ in passes]
    longest, width = max(prefix_lengths), max(widths)
    input_rows: list[list[int]] = []
    mask_rows: list[list[int]] = []
    position_rows: list[list[int]] = []
    for (rows, _, _), prefix, own_width in zip(passes, prefix_lengths, widths):
        for row in rows:
            input_rows.append(row + [pad_id] * (width - own_width))
            mask_rows.append([0] * (longest - prefix) + [1] * (prefix + width))
            position_rows.append(list(range(prefix, prefix + width)))
    merged = _left_padded(passes, prefix_lengths, longest)
    # Logits from the earliest position any pass keeps, to the end of the padded width.
    first_kept = min(own_width - keep for (_, _, keep), own_width in zip(passes, widths))
    all_logits, grown = forward(
        torch.tensor(input_rows, dtype=torch.long, device=device),
        merged,
        width - first_kept,
        attention_mask=torch.tensor(mask_rows, dtype=torch.long, device=device),
        position_ids=torch.tensor(position_rows, dtype=torch.long, device=device),
    )
    layers = _layers(grown)
    results: list[tuple[torch.Tensor, DynamicCache]] = []
    row = 0
    for (rows, _, keep), prefix, own_width in zip(passes, prefix_lengths, widths):
        rows_slice = slice(row, row + len(rows))
        start = own_width - keep - first_kept
        logits = all_logits[rows_slice, start : start + keep]
        span = slice(longest - prefix, longest + own_width)
        data = [(k[rows_slice, :, span].contiguous(), v[rows_slice, :, span].contiguous()) for k, v in layers]
        results.append((logits, DynamicCache(ddp_cache_data=data)))
        row += len(rows)
    return results


def _left_padded(
    passes: list[tuple[list[list[int]], DynamicCache | None, int]], prefix_lengths: list[int], longest: int
) -> DynamicCache:
    """One cache for the whole batch: every pass's rows, padded with zeros on the left to ``longest``."""
    if longest == 0:
        return new_cache()
    pass_layers = [_layers(cache) if prefix > 0 else [] for (_, cache, _), prefix in zip(passes, prefix_lengths)]
    template = next(layers for layers in pass_layers if layers)
    merged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer, (key_like, value_like) in enumerate(template):
        keys, values = [], []
        for (rows, _, _), prefix, layers in zip(passes, prefix_lengths, pass_layers):
            count = len(rows)
            if prefix > 0:
                k, v = layers[layer]
                k, v = k[:, :, :prefix], v[:, :, :prefix]
                if k.shape[0] != count:
                    k, v = k.expand(count, -1, -1, -1), v.expand(count, -1, -1, -1)
            else:
                k = key_like.new_zeros((count, key_like.shape[1], 0, key_like.shape[3]))
                v = value_like.new_zeros((count, value_like.shape[1], 0, value_like.shape[3]))
            if prefix < longest:
                k = torch.cat([k.new_zeros((count, k.shape[1], longest - prefix, k.shape[3])), k], dim=2)
                v = torch.cat([v.new_zeros((count, v.shape[1], longest - prefix, v.shape[3])), v], dim=2)
            keys.append(k)
            values.append(v)
        merged.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
    return DynamicCache(ddp_cache_data=merged)
