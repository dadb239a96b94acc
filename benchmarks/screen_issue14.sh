#!/usr/bin/env bash
# Issue 14, stage 1: the IFEval screen on the first 40 dev prompts at --max-tokens 128.
# Resumable: every answer is cached per configuration and prompt, so running this again continues
# where it stopped. It grows N in steps of 8 prompts (4 at a time, batched), alternating the two-member and the
# three-member runs, so that an interrupted screen has (almost) the same N in every configuration.
# Run from the repo root:  nohup nice -n 19 benchmarks/screen_issue14.sh > /tmp/screen.log 2>&1 &
set -euo pipefail
PY=${PY:-.venv/bin/python}
LIMIT=${LIMIT:-40}
STEP=${STEP:-8}
CONCURRENCY=${CONCURRENCY:-4}
# specfuse+calibrated+leading (the length-bias fix) left the screen at N = 32: the screen found no length
# bias to fix once drafts were no longer over-trimmed (benchmarks/README.md).
TWO="members,specfuse,specfuse+logit,specfuse+calibrated,specfuse+calibrated+exit"
for ((n = STEP; n <= LIMIT; n += STEP)); do
  "$PY" -m benchmarks.quality --limit "$n" --max-tokens 128 --configs "$TWO" --concurrency "$CONCURRENCY" --quiet
  "$PY" -m benchmarks.quality --limit "$n" --max-tokens 128 --member smollm2-135m-instruct \
    --member qwen2.5-coder-0.5b-instruct --member gemma-3-270m --configs members,specfuse+rank --concurrency "$CONCURRENCY" --quiet
  echo "screen: N = $n done $(date -u +%H:%M:%S)"
done
