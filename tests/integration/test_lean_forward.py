"""The lean Llama-family forward pass computes exactly what transformers' forward computes.

Tiny random Llama, Qwen2 and Qwen3 models built in the test, loaded as members load them (prepacked on CPU
in float32 and bfloat16), and the two default members; every comparison is bit-for-bit.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import (
    AutoTokenizer,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from specfuse_core import HFMember, kv_cache
from specfuse_core.forward import LlamaFamilyForward, ModelForward, forward_for


def _build(directory, config_class, model_class, tokenizer_dir, **extra):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(3)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )  # fmt: skip
    model_class(config).save_pretrained(directory)
    for name in tokenizer_dir.iterdir():
        if "token" in name.name or name.suffix == ".jinja":
            shutil.copy(name, directory / name.name)
    return directory


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("families")
    return {
        "llama": tiny_dirs[0],
        "qwen2": _build(root / "qwen2", Qwen2Config, Qwen2ForCausalLM, tiny_dirs[0]),
        "qwen3": _build(root / "qwen3", Qwen3Config, Qwen3ForCausalLM, tiny_dirs[0], head_dim=16),  # q/k norms
    }


def _passes(forward, rows_by_pass):
    """Prefill each pass's prompt alone, then run one batched pass of all of them (left-padded
    caches, right-padded rows, as concurrent requests batch)."""
    passes = []
    for prompt, rows, keep in rows_by_pass:
        _, cache = forward(torch.tensor([prompt]), kv_cache.new_cache(), 1)
        passes.append((rows, kv_cache.expanded_prefix(cache, len(prompt), len(rows)), keep))
    return kv_cache.forward_batched(forward, passes, pad_id=0)


def _tensors(result):
    logits, cache = result
    return [logits] + [t for layer in cache.layers for t in (layer.keys, layer.values)]


def assert_same(plain, lean):
    a, b = _tensors(plain), _tensors(lean)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_the_lean_pass_is_bit_identical_to_transformers(family_dirs, family, dtype):
    member = HFMember(str(family_dirs[family]), dtype=dtype, device="cpu")
    lean, plain = member.forward, ModelForward(member.model)
    assert isinstance(lean, LlamaFamilyForward)
    prompt = [5, 17, 42, 8, 99, 3, 61]
    with torch.inference_mode():
        for keep in (1, 3, len(prompt)):  # a prefill that keeps the last, a few, or all positions
            assert_same(plain(torch.tensor([prompt]), kv_cache.new_cache(), keep), lean(torch.tensor([prompt]), kv_cache.new_cache(), keep))
        # decode steps and a scoring pass of concurrent requests with other prefix lengths and widths
        steps = [([5, 6, 7], [[9]], 1), (prompt, [[11]], 1), ([4] * 12, [[12]], 1)]
        scoring = [(prompt, [[20, 21, 22], [23, 24, 25]], 3), ([7, 7], [[30, 31]], 2)]
        for batch in (steps, scoring, steps[:1]):
            for p, q in zip(_passes(plain, batch), _passes(lean, batch)):
                assert_same(p, q)


def test_the_lean_pass_pads_rows_only_for_packed_products(tiny_dirs):
    member = HFMember(str(tiny_dirs[0]), dtype="bfloat16", device="cpu")
    assert member.forward._min_rows == 4  # the packed products compute at least four rows
    # a model object the user loaded keeps torch's linear layers: nothing to pad for
    unpacked = HFMember(type(member.model)(member.model.config), tokenizer=member.tokenizer)
    assert isinstance(unpacked.forward, LlamaFamilyForward) and unpacked.forward._min_rows == 1


def test_other_layouts_keep_transformers_forward(tmp_path, tiny_dirs):
    # sliding-window layers mask differently beyond the window, which a short check would not see
    sliding = _build(tmp_path / "q2s", Qwen2Config, Qwen2ForCausalLM, tiny_dirs[0], use_sliding_window=True, sliding_window=4, max_window_layers=0)
    mistral = _build(tmp_path / "mistral", MistralConfig, MistralForCausalLM, tiny_dirs[0])  # a class it does not know
    for directory in (sliding, mistral):
        member = HFMember(str(directory), device="cpu")
        assert type(member.forward) is ModelForward
        assert not LlamaFamilyForward.supports(member.model)


def test_a_lean_pass_that_differs_is_not_used(monkeypatch, tiny_dirs):
    member = HFMember(str(tiny_dirs[0]), dtype="float32", device="cpu")
    assert isinstance(forward_for(member.model), LlamaFamilyForward)
    real_call = LlamaFamilyForward.__call__

    def off_by_a_little(self, *args, **kwargs):
        logits, cache = real_call(self, *args, **kwargs)
        return logits + 1e-6, cache

    monkeypatch.setattr(LlamaFamilyForward, "__call__", off_by_a_little)
    assert type(forward_for(member.model)) is ModelForward


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_the_default_members_get_the_lean_pass_and_it_matches(preset):
    member = HFMember(preset)  # the defaults: bfloat16 where the CPU has it, float32 elsewhere
    assert isinstance(member.forward, LlamaFamilyForward)
    plain = ModelForward(member.model)
    prompt = member.prompt_ids([{"role": "user", "content": "Name three rivers in Europe."}])
    with torch.inference_mode():
        assert_same(plain(torch.tensor([prompt]), kv_cache.new_cache(), 4), member.forward(torch.tensor([prompt]), kv_cache.new_cache(), 4))
        batch = [(prompt, [[member.encode(" The")[0]]], 1), (prompt[:-5], [member.encode(" Rhine, Danube")], 2)]
        for p, q in zip(_passes(plain, batch), _passes(member.forward, batch)):
            assert_same(p, q)
