#!/usr/bin/env bash
# Scoring variants, stage 1: the IFEval screen (the default, mean_logit, calibrated, calibrated with
# exit on a lead, and three members with rank) on the first 40 dev prompts at --max-tokens 128.
# Results: docs/results/scoring_variants_screen_ifeval.md and rank_three_members_screen_ifeval.md
# (copied there from benchmarks/results/quality/<run-id>/results.md, which the scoring commands in
# benchmarks/README.md write).
# Resumable: every answer is cached per configuration and prompt, so running this again continues
# where it stopped. It grows N in steps of 8 prompts (4 at a time, batched), alternating the two-member and the
# three-member runs, so that an interrupted screen has (almost) the same N in every configuration.
# Run from the repo root:  nohup nice -n 19 benchmarks/scoring_variants_screen.sh > /tmp/screen.log 2>&1 &
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
