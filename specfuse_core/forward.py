"""A local member's forward pass: transformers' own, or a lean one for the Llama family.

:class:`ModelForward` calls the model as transformers defines it. :class:`LlamaFamilyForward` runs
the same operators in the same order for Llama, Qwen2 and Qwen3 models (SmolLM2 and Qwen2.5 among them),
but skips transformers' per-call plumbing (argument decorators, output records, keyword routing
through every layer), and pads each layer's input once to the rows a prepacked product computes
(:data:`~specfuse_core.numerics.PACKED_MIN_ROWS`) instead of once per product. Its logits and cache
are bit-identical to the model's own: :func:`forward_for` checks that on the loaded model before
using it, and keeps transformers' forward otherwise.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Any

import torch
from transformers import DynamicCache

from .numerics import PACKED_MIN_ROWS, PackedLinear

logger = logging.getLogger(__name__)


class ModelForward:
    """One forward pass of a causal LM on top of a KV cache, as transformers' ``model(...)`` computes it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.device: torch.device = model.device
        self._cache_keyword = _cache_keyword(type(model).forward)

    def __call__(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        logits_to_keep: int,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Logits of the last ``logits_to_keep`` positions of each row, and the grown cache.
        ``attention_mask`` (1 for a real position, 0 for padding) covers the cache and the new rows."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_keyword: cache},
        )
        grown = getattr(out, "cache", None)
        return out.logits, grown if grown is not None else out.past_key_values


LLAMA_FAMILY = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})
"""Model classes :class:`LlamaFamilyForward` knows: a pre-norm decoder with rotary q/k/v attention
(Qwen3's with a norm on each query and key head) and a gated MLP, the layout they share in transformers 5."""


class LlamaFamilyForward(ModelForward):
    """The forward pass of a Llama, Qwen2 or Qwen3 model without transformers' per-call plumbing.

    Every operator is the model's own module or function (norms, rotary embedding, attention
    implementation, activation), called in the order transformers calls them. Only the calls around
    them differ: the hidden states stay one ``(rows, hidden)`` matrix, padded once with zero rows to
    what a :class:`~specfuse_core.numerics.PackedLinear` computes, so a decode step's seven products
    per layer pad one input each instead of seven (a packed layer given four rows or more pads nothing
    itself). A packed product's rows do not depend on the others in its batch, so the padding changes
    no real row.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        from transformers.masking_utils import create_causal_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self._decoder = model.model
        self._layers = list(self._decoder.layers[: model.config.num_hidden_layers])
        modeling = sys.modules[type(self._layers[0].self_attn).__module__]
        self._apply_rotary = modeling.apply_rotary_pos_emb
        self._eager_attention = modeling.eager_attention_forward
        self._attention_functions = ALL_ATTENTION_FUNCTIONS
        self._create_mask = create_causal_mask
        self._mask_cache_keyword = _cache_keyword(create_causal_mask)
        packed = any(isinstance(m, PackedLinear) for layer in self._layers for m in layer.modules())
        self._min_rows = PACKED_MIN_ROWS if packed else 1

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether ``model`` has the layout this forward pass computes (it is still checked by :func:`forward_for`)."""
        config = getattr(model, "config", None)
        decoder = getattr(model, "model", None)
        if type(model).__name__ not in LLAMA_FAMILY or config is None or decoder is None:
            return False
        if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa") or getattr(decoder, "has_sliding_layers", False):
            return False
        attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
        wanted = {"self_attn": (attention, attention | {"q_norm", "k_norm"}), "mlp": ({"gate_proj", "up_proj", "down_proj"},)}
        for layer in getattr(decoder, "layers", []):
            for part, layouts in wanted.items():
                # any other submodule is something this pass does not compute (the activation may be a module)
                if {name for name, _ in getattr(layer, part).named_children()} - {"act_fn"} not in layouts:
                    return False
        return True

    def __call__(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        logits_to_keep: int,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DynamicCache]:
        batch, width = input_ids.shape
        rows = batch * width
        decoder = self._decoder
        embeds = decoder.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = (torch.arange(width, device=embeds.device) + cache.get_seq_length()).unsqueeze(0)
        mask = self._create_mask(
            config=self.model.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self._mask_cache_keyword: cache},
        )
        cos, sin = decoder.rotary_emb(embeds, position_ids)
        attend = self._attention_functions.get_interface(self.model.config._attn_implementation, self._eager_attention)
        hidden = self._padded(embeds.reshape(rows, -1))
        for index, layer in enumerate(self._layers):
            attention = layer.self_attn
            heads = (batch, width, -1, attention.head_dim)
            normed = layer.input_layernorm(hidden)
            query = attention.q_proj(normed)[:rows].view(heads)
            key = attention.k_proj(normed)[:rows].view(heads)
            if hasattr(attention, "q_norm"):  # Qwen3
                query, key = attention.q_norm(query), attention.k_norm(key)
            query, key = query.transpose(1, 2), key.transpose(1, 2)
            value = attention.v_proj(normed)[:rows].view(heads).transpose(1, 2)
            query, key = self._apply_rotary(query, key, cos, sin)
            key, value = cache.update(key, value, index)
            attended, _ = attend(attention, query, key, value, mask, dropout=0.0, scaling=attention.scaling)
            hidden = hidden + attention.o_proj(self._padded(attended.reshape(rows, -1)))
            normed = layer.post_attention_layernorm(hidden)
            mlp = layer.mlp
            gated = mlp.act_fn(mlp.gate_proj(normed)) * mlp.up_proj(normed)
            hidden = hidden + mlp.down_proj(gated)
        hidden = decoder.norm(hidden)[:rows].view(batch, width, -1)
        kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        return self.model.lm_head(kept), cache

    def _padded(self, matrix: torch.Tensor) -> torch.Tensor:
        missing = self._min_rows - matrix.shape[0]
        return torch.cat([matrix, matrix.new_zeros(missing, matrix.shape[1])]) if missing > 0 else matrix



def forward_for(model: torch.nn.Module) -> ModelForward:
    """The leanest forward pass that computes exactly what ``model``'s own does.

    A Llama, Qwen2 or Qwen3 model gets :class:`LlamaFamilyForward` once a short prefill and a decode step
    through it give bit-identical logits and cache to transformers' forward (a transformers release
    that changed the layout would fail this); every other model, and any model that fails, keeps
    :class:`ModelForward`.
    """
    plain = ModelForward(model)
    if not LlamaFamilyForward.supports(model):
        return plain
    lean = LlamaFamilyForward(model)
    try:
        same = _same_results(plain, lean)
    except Exception as error:  # any layout the lean pass cannot compute
        logger.info("lean forward unavailable for %s: %r", type(model).__name__, error)
        same = False
    if not same:
        logger.info("lean forward differs from %s's own; using transformers' forward", type(model).__name__)
    return lean if same else plain


@torch.inference_mode()
def _same_results(plain: ModelForward, lean: ModelForward) -> bool:
    vocab = int(plain.model.config.vocab_size)
    prompt = torch.tensor([[1, 2, 3, 5, 8]], device=plain.device) % vocab
    step = torch.tensor([[13]], device=plain.device) % vocab
    caches = DynamicCache(), DynamicCache()
    outputs = []
    for forward, cache in zip((plain, lean), caches):
        prefill, cache = forward(prompt, cache, logits_to_keep=prompt.shape[1])
        decode, cache = forward(step, cache, logits_to_keep=1)
        outputs.append([prefill, decode] + [t for layer in cache.layers for t in (layer.keys, layer.values)])
    return all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(*outputs))


@functools.cache
def _cache_keyword(function: Any) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; both spellings are supported."""
    return "cache" if "cache" in inspect.signature(function).parameters else "past_key_values"
