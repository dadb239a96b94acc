"""Round cost, KV-cache speedup, ensemble throughput and peak memory (linear-cost rounds).

Run from the repo root:  .venv/bin/python -m benchmarks.rounds --json
Every measurement runs in its own subprocess, so each peak-memory figure is clean.

1. Round time vs answer length, with and without the KV cache: median of rounds 2-6, median of
   rounds 40-45 (or the last five), and their ratio.
2. End-to-end time of a 400-token answer with vs without the cache (same prompt, greedy).
3. Ensemble throughput (accepted tokens/s in the first member's tokenizer) vs each member's solo
   `generate` throughput and the one-CPU bound of docs/algorithm.md §7: L/(L+1) / Σ_i (1/v_i).
   Where the time goes: total draft, verify and other (engine) time per mode.
4. Peak RSS of the ensemble vs the sum of the members' solo peaks.

``--part schedule`` measures the scheduler (``specfuse_core/scheduler.py``) instead, each run in its own subprocess:

5. A 120-token answer with today's schedule (``turns``: members take turns, torch's default thread
   count, default OpenMP wait policy) vs the new default (``auto``, as the ``specfuse`` command runs
   it): wall and CPU time, same text.
6. Both again while a competing process (started and stopped here) keeps one core busy: slowdown
   against idle.
7. Throughput with 1, 4 and 8 concurrent greedy requests (distinct prompts), whether every output
   equals the same request run alone, and peak RSS per level.
8. The bound for parallel members: L/(L+1) times the slowest member's solo speed on its share of the cores.

``--part step`` measures each member's forward pass against the hardware (issue #26), each in its own subprocess,
with torch's default thread count and again with one thread:

9. Memory bandwidth: best of five copies of a 512 MB tensor (read + write bytes per second). A member's
   bandwidth bound is its weights' bytes (a decode step reads each once) over that bandwidth.
10. Per member, float32 and bfloat16: one decode step (a 70-token prompt prefilled into the KV cache,
    then one token, ``torch.inference_mode``, median of ``--step-reps``) through the member's forward
    pass (``member.forward``) at batch 1, 4 and 8; the ratio step / bound; the batch-1 step through
    the member's pass and through transformers' own forward in alternating blocks; a
    ``torch.profiler`` breakdown of the batch-1 step (top operators by self CPU time, time inside
    operators vs outside them) and the output layer alone.
11. fp32 vs bf16 on the same weights over the 70 prompt positions: greedy argmax agreement and the
    largest difference of float32 log-probabilities (next prompt token, greedy token, whole vocabulary).

``--part anchor``: what a CPU user would run instead, each in its own subprocess:

12. Each member alone in llama.cpp (``llama_cpp.Llama`` on its preset's GGUF, 2 threads, n_ctx 2048,
    greedy, "Write a short essay about bread." through the GGUF's chat template, 64 new tokens;
    tokens/s excluding load) beside the same member alone in specfuse (``Ensemble([HFMember(name)])``,
    temperature 0, torch's default threads: tokens/s from wall time and from the member-call time in
    the trace) and the default ensemble; the ratios specfuse-alone / llama.cpp. Both alone runs again
    on one thread (``n_threads=1``, ``torch.set_num_threads(1)``): on a shared machine a two-thread
    run waits for a busy core.

``--part threads``: one OpenMP thread or all of them per pass (issue #26), each member in its own subprocess:

15. On a worker thread, with the passive OpenMP policy ``specfuse`` sets, through the member's forward
    pass (``member.forward``): decode steps (1 and 8 requests),
    12-position passes (1 and 8 requests: scoring) and prefills of 32, 128 and 512 positions, each on
    one thread and on torch's default count (median of ``--step-reps``); which of the two
    ``numerics.pass_threads`` picks for the member and whether it was the faster.

``--part dtype``: the default dtype (issue #26), each run in its own subprocess, float32 and bfloat16:

13. One answer of ``--max-tokens`` tokens with the default schedule: seconds, tokens/s, whether both dtypes
    write the same text.
14. 1, 4 and 8 concurrent greedy requests in each dtype (as in 7): throughput against one request at a
    time in the same dtype, equality with alone, peak RSS, and bf16's throughput against fp32 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = (
    "Write a detailed, step-by-step explanation of how a computer boots, from pressing the power "
    "button to the login screen. Cover firmware, the bootloader, the kernel and init."
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _member_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}


def child_solo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from specfuse_core import HFMember

    if args.threads:
        torch.set_num_threads(args.threads)
    member = HFMember(args.spec, **_member_options(args))
    messages = [{"role": "user", "content": PROMPT}]
    ids = torch.tensor([member.prompt_ids(messages)], device=member.device)
    with torch.inference_mode():
        member.model.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = member.model.generate(ids, max_new_tokens=args.solo_tokens, min_new_tokens=args.solo_tokens, do_sample=False)
        seconds = time.perf_counter() - start
    tokens = out.shape[1] - ids.shape[1]
    return {"member": member.name, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _peak_rss_mb()}  # fmt: skip


def child_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    from specfuse_core import Ensemble, FusionConfig

    config = FusionConfig(temperature=0, segment_tokens=args.segment_tokens, max_tokens=args.max_tokens, cache=not args.no_cache)
    ensemble = Ensemble.from_specs(args.member, config, **_member_options(args))
    messages = [{"role": "user", "content": PROMPT}]
    ensemble.generate(messages, max_tokens=4)  # warm-up
    start = time.perf_counter()
    result = ensemble.generate(messages)
    seconds = time.perf_counter() - start
    round_times = [e.timings.round_s for e in result.trace]
    phase_totals = {"draft_s": sum(e.timings.draft_s for e in result.trace),
                    "verify_s": sum(e.timings.verify_s for e in result.trace)}  # fmt: skip
    return {
        "cache": not args.no_cache,
        "seconds": seconds,
        "rounds": result.rounds,
        "output_tokens": result.output_tokens,
        "tokens_per_s": result.output_tokens / seconds,
        "round_times": round_times,
        "phase_totals_s": phase_totals,
        "finish_reason": result.finish_reason,
        "text": result.text,
        "calls_per_round": result.summary()["calls_per_round"],
        "peak_rss_mb": _peak_rss_mb(),
    }


CONCURRENT_PROMPTS = (
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
    "Describe how to make a cup of green tea.",
    "Give three tips for learning a new language.",
    "Why is the sky blue? Answer for a child.",
    "Summarise the water cycle in a few sentences.",
    "List the planets of the solar system with one fact each.",
)


def child_schedule(args: argparse.Namespace) -> dict[str, Any]:
    """One 120-token answer under ``args.schedule``: wall and CPU time."""
    if args.schedule == "turns":
        import torch  # noqa: F401 - loaded before specfuse: OpenMP's default wait policy, as before the scheduler
    else:
        from specfuse_core.scheduler import prefer_passive_openmp

        prefer_passive_openmp()  # what the `specfuse` command does before torch starts
    from specfuse_core import Ensemble, FusionConfig

    config = FusionConfig(temperature=0, segment_tokens=args.segment_tokens, max_tokens=args.max_tokens)
    ensemble = Ensemble.from_specs(args.member, config, schedule=args.schedule, **_member_options(args))
    messages = [{"role": "user", "content": PROMPT}]
    ensemble.generate(messages, max_tokens=4)  # warm-up
    cpu, start = time.process_time(), time.perf_counter()
    result = ensemble.generate(messages)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"schedule": args.schedule, "placements": [vars(p) for p in ensemble.placements], "seconds": seconds,
            "cpu_s": cpu, "output_tokens": result.output_tokens, "text": result.text}  # fmt: skip


def child_concurrent(args: argparse.Namespace) -> dict[str, Any]:
    """``args.concurrency`` requests at once (1: one after another), 48-token greedy answers."""
    from specfuse_core.scheduler import prefer_passive_openmp

    prefer_passive_openmp()
    from specfuse_core import Ensemble, FusionConfig

    config = FusionConfig(temperature=0, segment_tokens=args.segment_tokens, max_tokens=args.concurrent_tokens)
    ensemble = Ensemble.from_specs(args.member, config, schedule=args.schedule, **_member_options(args))
    # Alone (concurrency 1), every prompt is answered once, one after another: the reference for all levels.
    count = len(CONCURRENT_PROMPTS) if args.concurrency == 1 else args.concurrency
    prompts = [[{"role": "user", "content": p}] for p in CONCURRENT_PROMPTS[:count]]
    ensemble.generate(prompts[0], max_tokens=4)  # warm-up
    start = time.perf_counter()
    if args.concurrency == 1:
        results = [ensemble.generate(p) for p in prompts]
    else:

        async def together() -> list[Any]:
            return await asyncio.gather(*(ensemble.agenerate(p) for p in prompts[: args.concurrency]))

        results = asyncio.run(together())
    seconds = time.perf_counter() - start
    tokens = sum(r.output_tokens for r in results)
    stats = {m.name: vars(m.worker.stats) for m in ensemble.members if hasattr(m, "worker")}
    rounds = [[{"text": e.text, "totals": e.totals} for e in r.trace] for r in results]
    return {"concurrency": args.concurrency, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "texts": [r.text for r in results], "rounds": rounds, "worker_stats": stats,
            "peak_rss_mb": _peak_rss_mb()}  # fmt: skip


def child_batch_step(args: argparse.Namespace) -> dict[str, Any]:
    """What batching can gain at most: one decode step for 1, 4 and 8 requests in one padded batch
    (100-token contexts), on the member's thread budget."""
    import torch

    from specfuse_core import HFMember, kv_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    member = HFMember(args.spec, **_member_options(args))
    pad = member.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        _, cache = member.forward(torch.tensor([list(range(1000, 1100))]), kv_cache.new_cache(), 1)
        step_ms = {}
        for batch in (1, 4, 8):
            passes = [([[5]], kv_cache.select_row(cache, 0, 90 + i), 1) for i in range(batch)]
            kv_cache.forward_batched(member.forward, passes, pad)
            start = time.perf_counter()
            for _ in range(5):
                kv_cache.forward_batched(member.forward, passes, pad)
            step_ms[batch] = (time.perf_counter() - start) / 5 * 1000
    return {"member": member.name, "step_ms": step_ms, "gain": {b: b * step_ms[1] / ms for b, ms in step_ms.items()}}


STEP_TEXT = (
    "Bread is one of the oldest prepared foods. Flour, water, salt and yeast are mixed into a dough, "
    "left to rise, shaped and baked. The crust browns through the Maillard reaction while the crumb sets "
    "as starch gelatinises and proteins coagulate. Sourdough relies on wild yeasts and lactic acid "
    "bacteria instead of baker's yeast, which gives it a tangy flavour and a longer shelf life."
)
STEP_PROMPT_TOKENS = 70
ANCHOR_PROMPT = "Write a short essay about bread."


def _step_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer(STEP_TEXT, add_special_tokens=False)["input_ids"]
    while len(ids) < STEP_PROMPT_TOKENS:
        ids = ids + ids
    return ids[:STEP_PROMPT_TOKENS]


def _weight_bytes(model: Any) -> int:
    """Bytes a decode step reads at least: every weight once (tied tensors once, a prepacked weight
    in its packed copy), less an input embedding table that is not also the output layer (a step
    reads one row of it)."""
    from specfuse_core.numerics import PackedLinear

    tensors = {id(p): p for p in model.parameters()}
    tensors.update({id(m.packed_weight): m.packed_weight for m in model.modules() if isinstance(m, PackedLinear)})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    embed, head = model.get_input_embeddings().weight, getattr(model.get_output_embeddings(), "weight", None)
    if head is None or embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def child_step(args: argparse.Namespace) -> dict[str, Any]:
    """One decode step (70-token KV cache) at batch 1, 4 and 8 in ``args.step_dtype``, torch's default
    threads, through the member's forward pass (``member.forward``); the batch-1 step through
    transformers' own forward too, alternating with it; a profile of the batch-1 step; the output
    layer alone."""
    import torch

    from specfuse_core import HFMember, kv_cache
    from specfuse_core.forward import ModelForward

    if args.threads:
        torch.set_num_threads(args.threads)
    member = HFMember(args.spec, dtype=args.step_dtype)
    model, forward, ids = member.model, member.forward, _step_ids(member.tokenizer)
    reps = args.step_reps

    def step_times(run: Any, batch: int) -> list[float]:
        logits, cache = run(torch.tensor([ids] * batch), kv_cache.new_cache(), 1)
        token = logits[:, -1:].argmax(-1)
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            start = time.perf_counter()
            run(token, cache, 1)
            times.append(time.perf_counter() - start)
            kv_cache.crop(cache, len(ids))  # back to the 70-token prompt
        return times[1:]

    step_ms: dict[int, float] = {}
    with torch.inference_mode():
        for batch in (1, 4, 8):
            step_ms[batch] = statistics.median(step_times(forward, batch)) * 1000
        # The same batch-1 step through transformers' forward, in alternating blocks with member.forward.
        own_ms, transformers_ms = [], []
        for _ in range(3):
            own_ms += step_times(forward, 1)
            transformers_ms += step_times(ModelForward(model), 1)
        # Where a batch-1 step's time goes: operators by self CPU time (the profiler adds its own cost).
        logits, one_cache = forward(torch.tensor([ids]), kv_cache.new_cache(), 1)
        one_token = logits[:, -1:].argmax(-1)
        steps = 5
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                forward(one_token, one_cache, 1)
                kv_cache.crop(one_cache, len(ids))  # back to the 70-token prompt
            profiled_ms = (time.perf_counter() - start) / steps * 1000
        events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
        # crop() is not part of a step; its operators are few and are left in (they show by name).
        ops_ms = sum(e.self_cpu_time_total for e in events) / steps / 1000
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        matmul_ms = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / steps / 1000
        # The output layer alone (one row), the largest single matrix in both members.
        hidden = torch.randn(1, 1, model.config.hidden_size, dtype=model.dtype)
        head = model.get_output_embeddings()
        head(hidden)
        head_times = []
        for _ in range(reps):
            start = time.perf_counter()
            head(hidden)
            head_times.append(time.perf_counter() - start)
    return {"member": member.name, "dtype": args.step_dtype, "threads": torch.get_num_threads(),
            "forward": type(forward).__name__, "weight_bytes": _weight_bytes(model), "step_ms": step_ms, "reps": reps,
            "alternating_b1_ms": {"member_forward": statistics.median(own_ms) * 1000,
                                  "transformers_forward": statistics.median(transformers_ms) * 1000},
            "profile": {"steps": steps, "wall_ms_per_step": profiled_ms, "ops_self_ms_per_step": ops_ms,
                        "outside_ops_ms_per_step": profiled_ms - ops_ms, "matmul_self_ms_per_step": matmul_ms,
                        "op_calls_per_step": sum(e.count for e in events) / steps,
                        "top": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / steps / 1000,
                                 "calls_per_step": e.count / steps} for e in top]},
            "output_layer_ms": statistics.median(head_times) * 1000}  # fmt: skip


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "mkldnn::_linear_pointwise", "aten::mkldnn_linear")  # fmt: skip


THREAD_PASSES = ((1, 1), (8, 1), (1, 12), (8, 12), (1, 32), (1, 128), (1, 512))
"""``--part threads``: (requests, positions per request); width 1 is a decode step over a 70-token cache,
12 a scoring pass over it, and 32 or more a prefill from scratch."""


def child_threads(args: argparse.Namespace) -> dict[str, Any]:
    """Each pass of ``THREAD_PASSES`` on one thread and on torch's default count, on a worker thread."""
    from specfuse_core.scheduler import prefer_passive_openmp

    prefer_passive_openmp()  # as the `specfuse` command does
    import threading

    import torch

    from specfuse_core import HFMember, kv_cache
    from specfuse_core.numerics import pass_threads

    member = HFMember(args.spec, **_member_options(args))
    forward, ids = member.forward, (_step_ids(member.tokenizer) * 8)[:512]
    everything = torch.get_num_threads()
    rows: list[dict[str, Any]] = []

    def measure() -> None:
        with torch.inference_mode():
            for requests, width in THREAD_PASSES:
                ms: dict[int, float] = {}
                for threads in (1, everything):
                    torch.set_num_threads(threads)
                    prefix = STEP_PROMPT_TOKENS if width <= 12 else 0  # decode and scoring passes run over a cache
                    cache = kv_cache.new_cache()
                    if prefix:
                        _, cache = forward(torch.tensor([ids[:prefix]] * requests), cache, 1)
                    x = torch.tensor([ids[prefix : prefix + width]] * requests)
                    times = []
                    for _ in range(args.step_reps + 1):  # the first is a warm-up
                        start = time.perf_counter()
                        forward(x, cache, 1)
                        times.append(time.perf_counter() - start)
                        kv_cache.crop(cache, prefix)
                    ms[threads] = statistics.median(times[1:]) * 1000
                picked = pass_threads(everything, params=member.cost, positions=requests * width, width=width)
                faster = min(ms, key=ms.__getitem__)
                rows.append({"requests": requests, "width": width, "ms_one_thread": ms[1], "ms_all_threads": ms[everything],
                             "picked": picked, "picked_the_faster": ms[picked] <= ms[faster] * 1.02})  # fmt: skip

    worker = threading.Thread(target=measure, name="specfuse-benchmark")
    worker.start()
    worker.join()
    return {"member": member.name, "parameters": member.cost, "threads": everything, "passes": rows}


def child_agree(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy argmax and log-probabilities (float32 log-softmax) over the 70 prompt positions, fp32 vs
    the same weights loaded in bf16 (as ``HFMember`` loads them: prepacked, eager attention)."""
    import torch

    from specfuse_core import HFMember

    member, member_bf16 = HFMember(args.spec, dtype="float32"), HFMember(args.spec, dtype="bfloat16")
    ids = _step_ids(member.tokenizer)
    x = torch.tensor([ids])
    with torch.inference_mode():
        full = torch.log_softmax(member.model(x).logits[0].float(), -1)
        half = torch.log_softmax(member_bf16.model(x).logits[0].float(), -1)
    greedy, greedy_half = full.argmax(-1), half.argmax(-1)
    nxt = torch.tensor(ids[1:])
    diff = (full - half).abs()
    return {"member": member.name, "positions": len(ids),
            "argmax_agree": int((greedy == greedy_half).sum()),
            "max_abs_logprob_diff_vocab": float(diff.max()),
            "max_abs_logprob_diff_greedy_token": float(diff.gather(1, greedy[:, None]).max()),
            "max_abs_logprob_diff_next_prompt_token": float(diff[:-1].gather(1, nxt[:, None]).max()),
            "median_abs_logprob_diff_next_prompt_token": float(diff[:-1].gather(1, nxt[:, None]).median())}  # fmt: skip


def child_bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    """Memory bandwidth: best of a few copies of a 512 MB tensor (read + write bytes) and sums of it
    (read bytes), torch's default threads."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = 512 * 2**20
    src = torch.ones(size // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    copies, sums = [], []
    for _ in range(6):
        start = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        sums.append(time.perf_counter() - start)
    return {"bytes": size, "threads": torch.get_num_threads(), "copy_gb_per_s": 2 * size / min(copies[1:]) / 1e9,
            "read_gb_per_s": size / min(sums[1:]) / 1e9}  # fmt: skip


def child_llama(args: argparse.Namespace) -> dict[str, Any]:
    """The member alone in llama.cpp (llama-cpp-python) on its preset's GGUF: 2 threads (or ``--threads``), greedy."""
    import llama_cpp

    from specfuse_core.presets import PRESETS, fetch_gguf

    path = fetch_gguf(PRESETS[args.spec])
    threads = args.threads or 2
    llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    messages = [{"role": "user", "content": ANCHOR_PROMPT}]
    llm.create_chat_completion(messages, max_tokens=4, temperature=0.0)  # warm-up
    llm.reset()  # no prompt prefix reused from the warm-up
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    start = time.perf_counter()
    out = llm.create_chat_completion(messages, max_tokens=args.anchor_tokens, temperature=0.0)
    seconds = time.perf_counter() - start
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    tokens = out["usage"]["completion_tokens"]
    return {"member": args.spec, "threads": threads, "gguf": path.name, "gguf_bytes": path.stat().st_size, "tokens": tokens,
            "prompt_tokens": out["usage"]["prompt_tokens"], "seconds": seconds, "tokens_per_s": tokens / seconds,
            "eval_tokens_per_s": perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms else None,
            "prompt_eval_ms": perf.t_p_eval_ms, "text": out["choices"][0]["message"]["content"]}  # fmt: skip


def child_anchor_specfuse(args: argparse.Namespace) -> dict[str, Any]:
    """The same request through specfuse: one member alone (``--spec``) or the ensemble of ``--member``s."""
    from specfuse_core.scheduler import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads OpenMP, as the `specfuse` command does
    import torch

    from specfuse_core import DEFAULT_MEMBERS, Ensemble, HFMember

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [args.spec] if args.spec else list(args.member or DEFAULT_MEMBERS)
    ensemble = Ensemble([HFMember(spec, **_member_options(args)) for spec in specs])
    messages = [{"role": "user", "content": ANCHOR_PROMPT}]
    ensemble.generate(messages, temperature=0, max_tokens=4)  # warm-up
    start = time.perf_counter()
    result = ensemble.generate(messages, temperature=0, max_tokens=args.anchor_tokens)
    seconds = time.perf_counter() - start
    call_s: dict[str, float] = {}
    for event in result.trace:
        for call in event.calls:
            call_s[call.member] = call_s.get(call.member, 0.0) + call.seconds
    tokens = result.output_tokens
    return {"members": [m.name for m in ensemble.members], "placements": [vars(p) for p in ensemble.placements],
            "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "member_call_s": call_s,
            "member_call_tokens_per_s": tokens / sum(call_s.values()) if len(specs) == 1 and call_s else None,
            "rounds": result.rounds, "finish_reason": result.finish_reason, "text": result.text}  # fmt: skip


def _first_difference(alone: list[dict[str, Any]], together: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first round where a request's answer differs when run with others, with both rounds' totals."""
    for a, b in zip(alone, together):
        if a["text"] != b["text"]:
            return {"alone": a, "together": b}
    return None


@contextlib.contextmanager
def busy_core() -> Any:
    """A competing process that keeps one core busy while the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.kill()
        hog.wait()


def _spawn(extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess. With ``--resume DIR`` a measurement already saved
    there (same arguments) is read back instead of run again."""
    saved = None
    if args.resume:
        key = "_".join(extra + [str(args.segment_tokens), str(args.max_tokens), str(args.concurrent_tokens),
                                *(args.member or []), args.device or "", args.dtype or ""])  # fmt: skip
        saved = Path(args.resume) / (key.replace("/", "_").replace(" ", "_") + ".json")
        if saved.exists():
            return json.loads(saved.read_text())
    result = _run_child(extra, args)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result))
    return result


def _run_child(extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.rounds", *extra, "--segment-tokens", str(args.segment_tokens),
               "--max-tokens", str(args.max_tokens), "--solo-tokens", str(args.solo_tokens),
               "--concurrent-tokens", str(args.concurrent_tokens), "--step-reps", str(args.step_reps),
               "--anchor-tokens", str(args.anchor_tokens)]  # fmt: skip
    for spec in args.member or []:
        command += ["--member", spec]
    if args.device:
        command += ["--device", args.device]
    if args.dtype:
        command += ["--dtype", args.dtype]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {extra} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _early_late(times: list[float]) -> tuple[float, float]:
    early = statistics.median(times[1:6])
    late_window = times[39:45] if len(times) >= 45 else times[-5:]
    return early, statistics.median(late_window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", action="append", help="member spec (default: the default ensemble)")
    parser.add_argument("--segment-tokens", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--solo-tokens", type=int, default=100)
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--part", choices=("cache", "schedule", "step", "anchor", "dtype", "threads"), default="cache",
                        help="cache: round cost and the KV cache (default); schedule: the scheduler; "
                             "step: decode step vs the bandwidth bound; anchor: llama.cpp vs specfuse; "
                             "dtype: float32 vs bfloat16 answers and concurrency; threads: one thread or all per pass")  # fmt: skip
    parser.add_argument("--resume", metavar="DIR", help="save each measurement in DIR and reuse the ones already there")
    parser.add_argument("--concurrent-tokens", type=int, default=48, help="--part schedule: tokens per concurrent answer")
    parser.add_argument("--step-reps", type=int, default=7, help="--part step: timed repetitions per decode step")
    parser.add_argument("--anchor-tokens", type=int, default=64, help="--part anchor: new tokens per answer")
    parser.add_argument("--child", choices=("solo", "ensemble", "schedule", "concurrent", "batch-step", "step", "agree",
                                            "bandwidth", "llama", "anchor-specfuse", "threads"), help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--step-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--schedule", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)  # tells apart saved runs with equal arguments
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        children = {"solo": child_solo, "ensemble": child_ensemble, "schedule": child_schedule,
                    "concurrent": child_concurrent, "batch-step": child_batch_step, "step": child_step,
                    "agree": child_agree, "bandwidth": child_bandwidth, "llama": child_llama,
                    "anchor-specfuse": child_anchor_specfuse, "threads": child_threads}  # fmt: skip
        print(json.dumps(children[args.child](args)))
        return 0

    from specfuse_core import DEFAULT_MEMBERS

    specs = args.member or list(DEFAULT_MEMBERS)
    if args.part == "schedule":
        return schedule_report(args, specs)
    if args.part == "step":
        return step_report(args, specs)
    if args.part == "threads":
        return threads_report(args, specs)
    if args.part == "anchor":
        return anchor_report(args, specs)
    if args.part == "dtype":
        return dtype_report(args, specs)
    solos = [_spawn(["--child", "solo", "--spec", spec], args) for spec in specs]
    cached = _spawn(["--child", "ensemble"], args)
    uncached = _spawn(["--child", "ensemble", "--no-cache"], args)

    L = args.segment_tokens
    bound = (L / (L + 1)) / sum(1 / s["tokens_per_s"] for s in solos)
    early_c, late_c = _early_late(cached["round_times"])
    early_u, late_u = _early_late(uncached["round_times"])
    report = {
        "members": specs,
        "segment_tokens": L,
        "max_tokens": args.max_tokens,
        "same_text": cached["text"] == uncached["text"],
        "output_tokens": cached["output_tokens"],
        "rounds": cached["rounds"],
        "round_time_cache": {"early_s": early_c, "late_s": late_c, "late_over_early": late_c / early_c},
        "round_time_no_cache": {"early_s": early_u, "late_s": late_u, "late_over_early": late_u / early_u},
        "end_to_end_s": {"cache": cached["seconds"], "no_cache": uncached["seconds"]},
        "cache_speedup": uncached["seconds"] / cached["seconds"],
        "solo_tokens_per_s": {s["member"]: s["tokens_per_s"] for s in solos},
        "ensemble_tokens_per_s": cached["tokens_per_s"],
        "throughput_bound_tokens_per_s": bound,
        "throughput_over_bound": cached["tokens_per_s"] / bound,
        "calls_per_round": cached["calls_per_round"],
        "phase_totals_s": {"cache": cached["phase_totals_s"], "no_cache": uncached["phase_totals_s"]},
        "peak_rss_mb": {"ensemble": cached["peak_rss_mb"], "solo": {s["member"]: s["peak_rss_mb"] for s in solos}},
        "peak_over_solo_sum": cached["peak_rss_mb"] / sum(s["peak_rss_mb"] for s in solos),
    }
    print(f"answer: {cached['output_tokens']} tokens in {cached['rounds']} rounds (same text without cache: {report['same_text']})")
    print(f"round time, cache:    early {early_c:.3f}s  late {late_c:.3f}s  ratio {late_c / early_c:.2f}")
    print(f"round time, no cache: early {early_u:.3f}s  late {late_u:.3f}s  ratio {late_u / early_u:.2f}")
    print(f"end to end: cache {cached['seconds']:.1f}s, no cache {uncached['seconds']:.1f}s, speedup {report['cache_speedup']:.2f}x")
    for label, run in (("cache", cached), ("no cache", uncached)):
        phases = run["phase_totals_s"]
        print(f"time split, {label}: draft {phases['draft_s']:.1f}s, verify {phases['verify_s']:.1f}s, "
              f"other {run['seconds'] - phases['draft_s'] - phases['verify_s']:.1f}s")  # fmt: skip
    solo_text = ", ".join(f"{s['member']} {s['tokens_per_s']:.2f}" for s in solos)
    print(f"throughput: ensemble {cached['tokens_per_s']:.2f} tok/s, bound {bound:.2f} tok/s, "
          f"ratio {report['throughput_over_bound']:.2f} (solo: {solo_text})")  # fmt: skip
    print(f"peak RSS: ensemble {cached['peak_rss_mb']:.0f} MB vs solo sum {sum(s['peak_rss_mb'] for s in solos):.0f} MB"
          f" (ratio {report['peak_over_solo_sum']:.2f})")  # fmt: skip
    if args.json:
        print(json.dumps(report))
    return 0


def schedule_report(args: argparse.Namespace, specs: list[str]) -> int:
    """``--part schedule``: items 5-8 of the module docstring."""
    runs: dict[str, dict[str, Any]] = {}
    for schedule in ("turns", "auto"):
        runs[f"{schedule}/idle"] = _spawn(["--child", "schedule", "--schedule", schedule], args)
        with busy_core():
            runs[f"{schedule}/busy"] = _spawn(["--child", "schedule", "--schedule", schedule, "--label", "busy"], args)
    levels = {n: _spawn(["--child", "concurrent", "--concurrency", str(n)], args) for n in (1, 4, 8)}
    new, old = runs["auto/idle"], runs["turns/idle"]
    threads = {p["member"]: p["threads"] for p in new["placements"]}
    solos = [_spawn(["--child", "solo", "--spec", spec, *(["--threads", str(threads[name])] if threads.get(name) else [])], args)
             for spec, name in zip(specs, threads)]  # fmt: skip
    slowest = min(solos, key=lambda s: s["tokens_per_s"])
    slowest_spec = specs[solos.index(slowest)]
    kernel = _spawn(["--child", "batch-step", "--spec", slowest_spec,
                     *(["--threads", str(threads[slowest["member"]])] if threads.get(slowest["member"]) else [])], args)  # fmt: skip
    L = args.segment_tokens
    bound = L / (L + 1) * slowest["tokens_per_s"]
    report = {
        "members": specs,
        "placements": new["placements"],
        "answer_tokens": new["output_tokens"],
        "same_text_turns_vs_auto": new["text"] == old["text"],
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "cpu_s": {k: v["cpu_s"] for k, v in runs.items()},
        "speedup_auto_vs_turns": old["seconds"] / new["seconds"],
        "cpu_ratio_auto_vs_turns": new["cpu_s"] / old["cpu_s"],
        "busy_slowdown": {s: runs[f"{s}/busy"]["seconds"] / runs[f"{s}/idle"]["seconds"] for s in ("turns", "auto")},
        "tokens_per_s": {"auto": new["output_tokens"] / new["seconds"], "turns": old["output_tokens"] / old["seconds"]},
        "solo_tokens_per_s_on_share": {s["member"]: s["tokens_per_s"] for s in solos},
        "parallel_bound_tokens_per_s": bound,
        "auto_over_bound": new["output_tokens"] / new["seconds"] / bound,
        "concurrency": _concurrency_rows(levels),
        "batched_decode_step": kernel,
    }
    print(f"placements: {new['placements']}")
    for key in runs:
        print(f"{key:>10}: {runs[key]['seconds']:.1f} s wall, {runs[key]['cpu_s']:.1f} s CPU")
    print(f"auto vs turns (idle): {report['speedup_auto_vs_turns']:.2f}x faster, {report['cpu_ratio_auto_vs_turns']:.2f}x CPU "
          f"(same text: {report['same_text_turns_vs_auto']})")  # fmt: skip
    print(f"one core busy / idle: turns {report['busy_slowdown']['turns']:.2f}x, auto {report['busy_slowdown']['auto']:.2f}x")
    print(f"throughput auto {report['tokens_per_s']['auto']:.2f} tok/s vs parallel bound {bound:.2f} tok/s "
          f"(ratio {report['auto_over_bound']:.2f})")  # fmt: skip
    _print_concurrency(report["concurrency"])
    gains = ", ".join(f"{b}: {kernel['step_ms'][b]:.0f} ms ({g:.2f}x)" for b, g in kernel["gain"].items())
    print(f"batched decode step of {kernel['member']} (most batching can gain): {gains}")
    if args.json:
        print(json.dumps(report))
    return 0


def _concurrency_rows(levels: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per concurrency level: throughput against one request at a time, equality with alone, peak RSS."""
    alone = levels[1]
    return {
        n: {"tokens_per_s": r["tokens_per_s"], "throughput_vs_1": r["tokens_per_s"] / alone["tokens_per_s"],
            "identical_to_alone": r["texts"] == alone["texts"][: len(r["texts"])],
            "differences": [d for i, t in enumerate(r["rounds"])
                            if (d := _first_difference(alone["rounds"][i], t)) is not None],
            "peak_rss_mb": r["peak_rss_mb"], "peak_rss_vs_1": r["peak_rss_mb"] / alone["peak_rss_mb"],
            "worker_stats": r["worker_stats"]}
        for n, r in levels.items()
    }  # fmt: skip


def _print_concurrency(rows: dict[int, dict[str, Any]], label: str = "") -> None:
    for n, row in rows.items():
        print(f"{label}{n} concurrent: {row['tokens_per_s']:.2f} tok/s ({row['throughput_vs_1']:.2f}x), identical to "
              f"alone: {row['identical_to_alone']}, peak RSS {row['peak_rss_mb']:.0f} MB ({row['peak_rss_vs_1']:.2f}x)")  # fmt: skip
        for difference in row["differences"]:
            print(f"  differs: alone {difference['alone']}  together {difference['together']}")


DTYPES = ("float32", "bfloat16")


def dtype_report(args: argparse.Namespace, specs: list[str]) -> int:
    """``--part dtype``: items 13-14 of the module docstring."""
    answers = {d: _spawn(["--child", "schedule", "--dtype", d], args) for d in DTYPES}
    levels = {d: {n: _spawn(["--child", "concurrent", "--concurrency", str(n), "--dtype", d], args) for n in (1, 4, 8)}
              for d in DTYPES}  # fmt: skip
    fp32, bf16 = (answers[d] for d in DTYPES)
    report = {
        "members": specs,
        "answer": {d: {"seconds": a["seconds"], "output_tokens": a["output_tokens"],
                       "tokens_per_s": a["output_tokens"] / a["seconds"], "text": a["text"]}
                   for d, a in answers.items()},
        "bf16_speedup": fp32["seconds"] / bf16["seconds"],
        "same_text": fp32["text"] == bf16["text"],
        "concurrency": {d: _concurrency_rows(rows) for d, rows in levels.items()},
        "bf16_vs_fp32_one_at_a_time": levels["bfloat16"][1]["tokens_per_s"] / levels["float32"][1]["tokens_per_s"],
        "bf16_concurrent_vs_fp32_alone": {n: levels["bfloat16"][n]["tokens_per_s"] / levels["float32"][1]["tokens_per_s"]
                                          for n in (4, 8)},
    }  # fmt: skip
    for d, a in report["answer"].items():
        print(f"{d}: {a['output_tokens']} tokens in {a['seconds']:.1f} s ({a['tokens_per_s']:.2f} tok/s)")
    print(f"bf16 speed-up {report['bf16_speedup']:.2f}x, same text: {report['same_text']}")
    for d, rows in report["concurrency"].items():
        _print_concurrency(rows, label=f"{d}: ")
    if args.json:
        print(json.dumps(report))
    return 0


THREAD_SETTINGS = (("default", []), ("1", ["--threads", "1"]))
"""torch's default thread count, and one thread: on a shared machine a two-thread kernel waits for a core."""


def step_report(args: argparse.Namespace, specs: list[str]) -> int:
    """``--part step``: items 9-11 of the module docstring, with torch's default threads and with one."""
    bandwidth = {t: _spawn(["--child", "bandwidth", *extra], args) for t, extra in THREAD_SETTINGS}
    gb_s = max(b["copy_gb_per_s"] for b in bandwidth.values())  # the machine's, whichever thread count reached it
    members: dict[str, Any] = {}
    for spec in specs:
        row: dict[str, Any] = {}
        for dtype in ("float32", "bfloat16"):
            for threads, extra in THREAD_SETTINGS:
                step = _spawn(["--child", "step", "--spec", spec, "--step-dtype", dtype, *extra], args)
                bound_ms = step["weight_bytes"] / (gb_s * 1e9) * 1000
                step["bound_ms"] = bound_ms
                step["step_over_bound"] = {b: ms / bound_ms for b, ms in step["step_ms"].items()}
                step["batch_gain"] = {b: int(b) * step["step_ms"]["1"] / ms for b, ms in step["step_ms"].items()}
                row[f"{dtype}/{threads}"] = step
        row["agreement"] = _spawn(["--child", "agree", "--spec", spec], args)
        members[spec] = row
    report = {"members": specs, "bandwidth": bandwidth, "bandwidth_gb_per_s": gb_s, "per_member": members}
    for threads, b in bandwidth.items():
        print(f"memory bandwidth, threads {threads} ({b['threads']}): copy {b['copy_gb_per_s']:.1f} GB/s "
              f"(read+write bytes), sum {b['read_gb_per_s']:.1f} GB/s (read)")  # fmt: skip
    for spec, row in members.items():
        for key, s in row.items():
            if key == "agreement":
                continue
            steps = " / ".join(f"{s['step_ms'][b]:.1f}" for b in ("1", "4", "8"))
            gains = " / ".join(f"{s['batch_gain'][b]:.2f}x" for b in ("4", "8"))
            print(f"{spec} {key} ({s['threads']} threads): step b1/b4/b8 {steps} ms, weights "
                  f"{s['weight_bytes'] / 1e6:.0f} MB, bound {s['bound_ms']:.1f} ms, b1/bound "
                  f"{s['step_over_bound']['1']:.2f}, gain b4/b8 {gains}, output layer {s['output_layer_ms']:.2f} ms")  # fmt: skip
            alt = s["alternating_b1_ms"]
            print(f"  b1 alternating: {s['forward']} {alt['member_forward']:.1f} ms, transformers' forward "
                  f"{alt['transformers_forward']:.1f} ms ({alt['transformers_forward'] / alt['member_forward']:.2f}x)")  # fmt: skip
            p = s["profile"]
            print(f"  profile b1: {p['wall_ms_per_step']:.1f} ms/step, in ops {p['ops_self_ms_per_step']:.1f} ms "
                  f"(matmul {p['matmul_self_ms_per_step']:.1f}), outside ops {p['outside_ops_ms_per_step']:.1f} ms, "
                  f"{p['op_calls_per_step']:.0f} op calls")  # fmt: skip
            for op in p["top"][:8]:
                print(f"    {op['op']:<55} {op['self_ms_per_step']:7.2f} ms  x{op['calls_per_step']:.0f}")
        a = row["agreement"]
        print(f"  fp32 vs bf16: argmax agrees {a['argmax_agree']}/{a['positions']}, max |dlogp| next prompt token "
              f"{a['max_abs_logprob_diff_next_prompt_token']:.3f}, greedy token {a['max_abs_logprob_diff_greedy_token']:.3f}, "
              f"whole vocabulary {a['max_abs_logprob_diff_vocab']:.3f}")  # fmt: skip
    if args.json:
        print(json.dumps(report))
    return 0


def threads_report(args: argparse.Namespace, specs: list[str]) -> int:
    """``--part threads``: item 15 of the module docstring."""
    report = {spec: _spawn(["--child", "threads", "--spec", spec], args) for spec in specs}
    for result in report.values():
        print(f"{result['member']} ({result['parameters'] / 1e6:.0f}M parameters), 1 vs {result['threads']} threads:")
        for row in result["passes"]:
            mark = "" if row["picked_the_faster"] else "  <- the other count was faster"
            print(f"  {row['requests']} x {row['width']:>3} positions: {row['ms_one_thread']:7.1f} / "
                  f"{row['ms_all_threads']:7.1f} ms; picks {row['picked']}{mark}")  # fmt: skip
    if args.json:
        print(json.dumps(report))
    return 0


def anchor_report(args: argparse.Namespace, specs: list[str]) -> int:
    """``--part anchor``: item 12 of the module docstring (llama.cpp also on one thread, for reference)."""
    rows: dict[str, Any] = {}
    for spec in specs:
        row: dict[str, Any] = {}
        for threads, extra in THREAD_SETTINGS:
            suffix = "" if threads == "default" else f"_{threads}_thread"
            llama = _spawn(["--child", "llama", "--spec", spec, *extra], args)
            alone = _spawn(["--child", "anchor-specfuse", "--spec", spec, *extra], args)
            row |= {f"llama_cpp{suffix}": llama, f"specfuse{suffix}": alone,
                    f"wall_ratio{suffix}": alone["tokens_per_s"] / llama["tokens_per_s"],
                    f"member_call_ratio{suffix}": alone["member_call_tokens_per_s"] / llama["tokens_per_s"]}  # fmt: skip
        row["same_text"] = row["specfuse"]["text"] == row["llama_cpp"]["text"]
        rows[spec] = row
    ensemble = _spawn(["--child", "anchor-specfuse", "--label", "ensemble"], args)
    report = {"members": specs, "per_member": rows, "ensemble": ensemble}
    for spec, row in rows.items():
        llama, alone = row["llama_cpp"], row["specfuse"]
        print(f"{spec}: llama.cpp {llama['tokens_per_s']:.1f} tok/s ({llama['tokens']} tokens, eval only "
              f"{llama['eval_tokens_per_s']:.1f}; 1 thread {row['llama_cpp_1_thread']['tokens_per_s']:.1f}); "
              f"specfuse alone {alone['tokens_per_s']:.1f} tok/s wall, {alone['member_call_tokens_per_s']:.1f} tok/s "
              f"member calls ({alone['tokens']} tokens); ratio {row['wall_ratio']:.2f} wall, "
              f"{row['member_call_ratio']:.2f} member calls")  # fmt: skip
        one = row["specfuse_1_thread"]
        print(f"  1 thread: llama.cpp {row['llama_cpp_1_thread']['tokens_per_s']:.1f} tok/s, specfuse alone "
              f"{one['tokens_per_s']:.1f} tok/s wall, {one['member_call_tokens_per_s']:.1f} member calls; ratio "
              f"{row['wall_ratio_1_thread']:.2f} wall, {row['member_call_ratio_1_thread']:.2f} member calls; "
              f"same text as llama.cpp: {row['same_text']}")  # fmt: skip
    calls = ", ".join(f"{m} {s:.1f} s" for m, s in ensemble["member_call_s"].items())
    print(f"default ensemble: {ensemble['tokens_per_s']:.1f} tok/s ({ensemble['tokens']} tokens in {ensemble['seconds']:.1f} s;"
          f" member calls {calls})")  # fmt: skip
    if args.json:
        print(json.dumps(report))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
