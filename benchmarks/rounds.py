"""Round cost, KV-cache speedup, ensemble throughput and peak memory (issue: linear-cost rounds).

Run from the repo root:  .venv/bin/python -m benchmarks.rounds --json
Every measurement runs in its own subprocess, so each peak-memory figure is clean.

1. Round time vs answer length, with and without the KV cache: median of rounds 2-6, median of
   rounds 40-45 (or the last five), and their ratio.
2. End-to-end time of a 400-token answer with vs without the cache (same prompt, greedy).
3. Ensemble throughput (accepted tokens/s in the first member's tokenizer) vs each member's solo
   `generate` throughput and the one-CPU bound of algorithm.md §7: L/(L+1) / Σ_i (1/v_i).
   Where the time goes: total draft, verify and other (engine) time per mode.
4. Peak RSS of the ensemble vs the sum of the members' solo peaks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
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


def _spawn(extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.rounds", *extra, "--segment-tokens", str(args.segment_tokens),
               "--max-tokens", str(args.max_tokens), "--solo-tokens", str(args.solo_tokens)]  # fmt: skip
    for spec in args.member or []:
        command += ["--member", spec]
    if args.device:
        command += ["--device", args.device]
    if args.dtype:
        command += ["--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True)
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
    parser.add_argument("--child", choices=("solo", "ensemble"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        result = child_solo(args) if args.child == "solo" else child_ensemble(args)
        print(json.dumps(result))
        return 0

    from specfuse_core import DEFAULT_MEMBERS

    specs = args.member or list(DEFAULT_MEMBERS)
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


if __name__ == "__main__":
    raise SystemExit(main())
