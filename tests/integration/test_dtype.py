"""Which dtype a local member gets, and scores that stay float32-sound when the weights are bfloat16.

Tiny random models built in the test; the CPU's bf16 support is mocked both ways, so every machine
runs every case.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from specfuse_core import ConfigError, HFMember, NotSupportedYetError
from specfuse_core.member import SamplingParams
from specfuse_core.numerics import (
    KERNEL_CACHE_CAPACITY,
    PackedLinear,
    cpu_has_native_bf16,
    default_dtype,
    packed_linear_available,
)

MESSAGES = [{"role": "user", "content": "Where is Paris?"}]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, seed=None)


def mock_cpu(monkeypatch: pytest.MonkeyPatch, *, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [
        (False, False, torch.float32),
        (False, True, torch.bfloat16),
        (True, False, torch.bfloat16),
        (True, True, torch.bfloat16),
    ],
)
def test_auto_dtype_is_bfloat16_exactly_where_the_cpu_has_native_bf16(monkeypatch, tiny_dirs, amx, avx512_bf16, expected):
    mock_cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert cpu_has_native_bf16() is (expected == torch.bfloat16)
    for dtype in (None, "auto"):
        member = HFMember(str(tiny_dirs[0]), dtype=dtype, device="cpu")
        assert member.model.dtype == expected
        # bf16 on CPU uses eager attention: SDPA would round a row differently when a batch pads it
        assert member.model.config._attn_implementation == ("eager" if expected == torch.bfloat16 else "sdpa")


def test_a_dtype_the_user_sets_wins_over_the_cpu(monkeypatch, tiny_dirs):
    mock_cpu(monkeypatch, amx=True, avx512_bf16=True)
    assert HFMember(str(tiny_dirs[0]), dtype="float32").model.dtype == torch.float32
    mock_cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert HFMember(str(tiny_dirs[0]), dtype="bf16").model.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype 'float33'"):
        HFMember(str(tiny_dirs[0]), dtype="float33")


def test_cpu_members_bound_onednns_kernel_caches_unless_the_user_did(monkeypatch, tiny_dirs):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    HFMember(str(tiny_dirs[0]), dtype="float16")
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ  # float16 is not packed: no oneDNN kernels
    HFMember(str(tiny_dirs[0]), dtype="float32")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == KERNEL_CACHE_CAPACITY
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"


def test_gpus_default_to_bfloat16_whatever_the_cpu(monkeypatch):
    mock_cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert default_dtype("cuda") == default_dtype("cuda:1") == torch.bfloat16
    assert default_dtype("cpu") == torch.float32


def test_bfloat16_scores_are_float32_log_softmax_of_the_logits(tiny_dirs):
    member = HFMember(str(tiny_dirs[0]), dtype="bfloat16")
    candidates = [(" in France.", False), (" is far", True), ("!", False)]

    async def scenario():
        session = await member.open_session(MESSAGES)
        draft = await session.draft(5, GREEDY)
        own = await session.score([(draft.text, draft.ended)])
        return draft, own[0], await session.score(candidates)

    draft, own, scores = asyncio.run(scenario())
    prompt = member.prompt_ids(MESSAGES)
    for text, ends, got in [(draft.text, draft.ended, own), *((t, e, s) for (t, e), s in zip(candidates, scores))]:
        ids = prompt + member.encode(text) + ([member.end_of_turn_id] if ends else [])
        with torch.inference_mode():
            logits = member.model(torch.tensor([ids])).logits[0]
        assert logits.dtype == torch.bfloat16
        targets = torch.tensor(ids[len(prompt) :])
        in_float32 = torch.log_softmax(logits.float(), dim=-1)[len(prompt) - 1 : -1].gather(-1, targets[:, None])[:, 0]
        in_bfloat16 = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1].gather(-1, targets[:, None])[:, 0]
        assert list(got.logprobs) == pytest.approx(in_float32.tolist(), abs=1e-5)
        # what a bf16 log-softmax would have given is far outside that tolerance: the check can fail
        assert max(abs(a - b) for a, b in zip(got.logprobs, in_bfloat16.float().tolist())) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_members_keep_their_linear_weights_prepacked(tiny_dirs, dtype):
    packed = HFMember(str(tiny_dirs[0]), dtype=dtype, device="cpu").model
    plain = HFMember(str(tiny_dirs[0]), dtype="float16", device="cpu").model.to(dtype)  # the same weights
    linears = [m for m in packed.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert linears and all(isinstance(m, PackedLinear) for m in linears) is packed_linear_available()
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())  # float16 keeps torch's layers
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.inference_mode():
        got = packed(ids).logits.float()
        expected = plain(ids).logits.float()
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.skipif(not packed_linear_available(), reason="this torch build has no oneDNN")
def test_a_packed_member_refuses_to_be_moved_or_cast_with_a_clear_error(tiny_dirs):
    model = HFMember(str(tiny_dirs[0]), dtype="float32", device="cpu").model
    for move in (lambda: model.to(torch.bfloat16), lambda: model.half(), lambda: model.to("meta")):
        with pytest.raises(NotSupportedYetError, match="load the member with the device= and dtype="):
            move()


@pytest.mark.skipif(not packed_linear_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_row_is_the_same_alone_and_in_any_batch(dtype):
    torch.manual_seed(0)
    # 1536 -> 576 is SmolLM2's down projection: one bf16 row on its own would round differently from
    # the same row in a batch of 18 or more (a float32 one from any batch), so fewer than
    # PACKED_MIN_ROWS rows are padded up to it.
    linear = torch.nn.Linear(1536, 576, dtype=dtype)
    layer, rows = PackedLinear(linear), torch.randn(40, 1536, dtype=dtype)
    with torch.inference_mode():
        alone = torch.cat([layer(rows[i : i + 1]) for i in range(len(rows))])
        for count in range(2, len(rows) + 1):
            assert torch.equal(layer(rows[:count]), alone[:count]), count
        assert torch.equal(layer(rows[None, :3])[0], alone[:3])  # (batch, positions, features) too
        assert torch.equal(layer(rows[0]), alone[0])  # and one unbatched row
        assert torch.allclose(alone.float(), linear(rows).float(), atol=0.05)


BREAD = (
    " Bread rises because yeast eats the sugars in the dough and releases carbon dioxide. The gas is"
    " trapped by the gluten network, so the dough expands; baking then sets the structure."
)
MEAN_TOLERANCE, MAX_TOLERANCE = 0.1, 0.5
"""bf16 vs fp32 scores of the same weights, nats per token (measured 2026-12-07: mean 0.04-0.05, max 0.18)."""


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
def test_default_members_score_the_same_text_alike_in_both_dtypes(preset):
    question = [{"role": "user", "content": "Explain briefly why bread rises."}]

    def scores(dtype: str) -> list[float]:
        member = HFMember(preset, dtype=dtype)

        async def scenario():
            session = await member.open_session(question)
            return (await session.score([(BREAD, True)]))[0].logprobs

        return list(asyncio.run(scenario()))

    fp32, bf16 = scores("float32"), scores("bfloat16")
    differences = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    assert len(differences) > 30
    assert sum(differences) / len(differences) <= MEAN_TOLERANCE and max(differences) <= MAX_TOLERANCE, differences


def test_the_bf16_rule_for_batched_answers_rejects_parting_at_a_clear_vote():
    from types import SimpleNamespace

    from batch_equality import assert_answers_as_alone

    def answer(texts: list[str], totals: list[float]) -> SimpleNamespace:
        rounds = [SimpleNamespace(text=t, totals=totals, winners=("a",), scores=[[0.5, 0.5]]) for t in texts]
        return SimpleNamespace(text="".join(texts), trace=rounds)

    alone_close, alone_clear = answer(["One", " two"], [0.52, 0.48]), answer(["One", " two"], [0.9, 0.1])
    together = answer(["One", " three"], [0.5, 0.5])
    assert_answers_as_alone(alone_close, together, torch.bfloat16)  # parted at a near-tie: rounding
    with pytest.raises(AssertionError, match="parted at a clear vote"):
        assert_answers_as_alone(alone_clear, together, torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_answers_as_alone(alone_close, together, torch.float32)  # float32 must be exact
