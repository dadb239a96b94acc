"""The default ensemble in bfloat16 vs float32 on IFEval, paired prompt by prompt (issue #26).

Run from the repo root (resumable: each dtype's answers are cached under ``--results`` by run id):

    .venv/bin/python -m benchmarks.dtype_quality --limit 80 --max-tokens 128 --concurrency 4

Each dtype answers with ``specfuse eval --configs specfuse --dtype D`` in its own process (greedy),
then the answers are scored (IFEval, loose) and paired: wins and losses of bf16 against fp32,
McNemar's exact p at the prompt level and a bootstrap 95% interval at the instruction level, plus
how many answers are the same text and the mean seconds per answer (answers run concurrently,
so seconds are under load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from specfuse_eval import ifeval, paired, quality

DTYPES = ("float32", "bfloat16")
CONFIG = "specfuse"


def generate(args: argparse.Namespace, dtype: str) -> None:
    command = [sys.executable, "-m", "specfuse_eval.quality", "--configs", CONFIG, "--dtype", dtype,
               "--max-tokens", str(args.max_tokens), "--segment-tokens", str(args.segment_tokens),
               "--concurrency", str(args.concurrency), "--results", args.results, "--quiet",
               *(["--limit", str(args.limit)] if args.limit else []), *(["--data", args.data] if args.data else [])]  # fmt: skip
    subprocess.run(command, check=True)


def cached_answers(args: argparse.Namespace, prompts: list[dict[str, Any]], dtype: str) -> dict[Any, dict[str, Any]]:
    from specfuse_core.engine import DEFAULT_MEMBERS

    dirnames = quality.cache_dirnames([CONFIG], list(DEFAULT_MEMBERS), {}, args.max_tokens, args.segment_tokens, dtype)
    cache = quality.ResponseCache(quality.resolve(args.results), dirnames)
    return {row["key"]: record for row in prompts if (record := cache.get(CONFIG, row["key"])) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="IFEval prompts (default: specfuse eval's)")
    parser.add_argument("--limit", type=int, default=80, help="the first N prompts (default 80)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--segment-tokens", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", default=quality.DEFAULT_RESULTS)
    parser.add_argument("--score-only", action="store_true", help="do not generate: pair the cached answers")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    if not args.score_only:
        for dtype in DTYPES:
            generate(args, dtype)
    prompts = quality.load_prompts(args.data, args.limit)
    answers = {dtype: cached_answers(args, prompts, dtype) for dtype in DTYPES}
    keys = [row["key"] for row in prompts if all(row["key"] in answers[d] for d in DTYPES)]
    by_key = {row["key"]: row for row in prompts}
    scores = {d: [ifeval.score_response(by_key[k], answers[d][k]["response"]) for k in keys] for d in DTYPES}
    fp32, bf16 = (scores[d] for d in DTYPES)
    comparison = paired.compare(
        "bfloat16", "float32",
        [s["binary_loose"] for s in bf16], [s["binary_loose"] for s in fp32],
        [sum(s["loose"]) for s in bf16], [sum(s["loose"]) for s in fp32], [len(s["loose"]) for s in fp32],
    )  # fmt: skip
    report = {
        "n": len(keys),
        "prompt_loose": {d: sum(s["binary_loose"] for s in scores[d]) / max(len(keys), 1) for d in DTYPES},
        "same_text": sum(answers["float32"][k]["response"] == answers["bfloat16"][k]["response"] for k in keys),
        "mean_seconds": {d: statistics.fmean(answers[d][k]["seconds"] for k in keys) if keys else None for d in DTYPES},
        "paired": comparison.to_dict(),
    }
    for d in DTYPES:
        print(f"{d}: prompt-level loose {100 * report['prompt_loose'][d]:.1f}% on N = {len(keys)}, "
              f"{report['mean_seconds'][d]:.1f} s per answer (concurrent)")  # fmt: skip
    print(f"same text: {report['same_text']} of {len(keys)}")
    print(comparison.sentence())
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
