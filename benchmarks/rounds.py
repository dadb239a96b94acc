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
    ensemble = Ensemble.from_specs(args.member, config, **_member_options(args))
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
        _, cache = kv_cache.forward_with_cache(member.model, torch.tensor([list(range(1000, 1100))]), kv_cache.new_cache(), 1)
        step_ms = {}
        for batch in (1, 4, 8):
            passes = [([[5]], kv_cache.select_row(cache, 0, 90 + i), 1) for i in range(batch)]
            kv_cache.forward_batched(member.model, passes, pad)
            start = time.perf_counter()
            for _ in range(5):
                kv_cache.forward_batched(member.model, passes, pad)
            step_ms[batch] = (time.perf_counter() - start) / 5 * 1000
    return {"member": member.name, "step_ms": step_ms, "gain": {b: b * step_ms[1] / ms for b, ms in step_ms.items()}}


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
               "--concurrent-tokens", str(args.concurrent_tokens)]  # fmt: skip
    for spec in args.member or []:
        command += ["--member", spec]
    if args.device:
        command += ["--device", args.device]
    if args.dtype:
        command += ["--dtype", args.dtype]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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
    parser.add_argument("--part", choices=("cache", "schedule"), default="cache",
                        help="cache: round cost and the KV cache (default); schedule: the scheduler")  # fmt: skip
    parser.add_argument("--resume", metavar="DIR", help="save each measurement in DIR and reuse the ones already there")
    parser.add_argument("--concurrent-tokens", type=int, default=48, help="--part schedule: tokens per concurrent answer")
    parser.add_argument("--child", choices=("solo", "ensemble", "schedule", "concurrent", "batch-step"), help=argparse.SUPPRESS)
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
                    "concurrent": child_concurrent, "batch-step": child_batch_step}  # fmt: skip
        print(json.dumps(children[args.child](args)))
        return 0

    from specfuse_core import DEFAULT_MEMBERS

    specs = args.member or list(DEFAULT_MEMBERS)
    if args.part == "schedule":
        return schedule_report(args, specs)
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
    alone = levels[1]["texts"]
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
        "concurrency": {
            n: {"tokens_per_s": r["tokens_per_s"], "throughput_vs_1": r["tokens_per_s"] / levels[1]["tokens_per_s"],
                "identical_to_alone": r["texts"] == alone[: len(r["texts"])],
                "differences": [d for i, t in enumerate(r["rounds"])
                                if (d := _first_difference(levels[1]["rounds"][i], t)) is not None],
                "peak_rss_mb": r["peak_rss_mb"], "peak_rss_vs_1": r["peak_rss_mb"] / levels[1]["peak_rss_mb"],
                "worker_stats": r["worker_stats"]}
            for n, r in levels.items()
        },
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
    for n, row in report["concurrency"].items():
        print(f"{n} concurrent: {row['tokens_per_s']:.2f} tok/s ({row['throughput_vs_1']:.2f}x), identical to alone: "
              f"{row['identical_to_alone']}, peak RSS {row['peak_rss_mb']:.0f} MB ({row['peak_rss_vs_1']:.2f}x)")  # fmt: skip
        for difference in row["differences"]:
            print(f"  differs: alone {difference['alone']}  together {difference['together']}")
    gains = ", ".join(f"{b}: {kernel['step_ms'][b]:.0f} ms ({g:.2f}x)" for b, g in kernel["gain"].items())
    print(f"batched decode step of {kernel['member']} (most batching can gain): {gains}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
