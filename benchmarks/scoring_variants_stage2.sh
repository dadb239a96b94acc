#!/usr/bin/env bash
# Scoring variants, stage 2: each member alone, the default and the screen's two best variants on the first
# 120 IFEval dev prompts at --max-tokens 128, and BFCL side by side with the same configurations
# (+grammar, --max-tokens 96). Resumable like the screen: every answer is cached per configuration
# and prompt (the screen's first 40 prompts are reused), so running this again continues where it stopped.
# Order: IFEval in steps of 8 prompts up to 120 (the decision needs N >= 120), then BFCL on 10 entries per
# category, then on 30.
# Results: docs/results/scoring_variants_ifeval.md and scoring_variants_bfcl.md (copied there from
# benchmarks/results/{quality,tools}/<run-id>/results.md, which the scoring commands in benchmarks/README.md write).
# Run from the repo root:  setsid nohup nice -n 19 benchmarks/scoring_variants_stage2.sh > /tmp/stage2.log 2>&1 &
set -euo pipefail
PY=${PY:-.venv/bin/python}
VARIANTS=${VARIANTS:-specfuse+logit,specfuse+calibrated}
START=${START:-40}
LIMIT=${LIMIT:-120}
STEP=${STEP:-8}
CONCURRENCY=${CONCURRENCY:-4}
TOOL_CONFIGS="qwen2.5-coder-0.5b-instruct+grammar,specfuse+grammar,${VARIANTS//,/+grammar,}+grammar"

bfcl() {
  "$PY" -m benchmarks.tools --limit "$1" --max-tokens 96 --configs "$TOOL_CONFIGS" --concurrency "$CONCURRENCY" --quiet
  echo "stage 2: BFCL $1 per category done $(date -u +%H:%M:%S)"
}

for ((n = START + STEP; n <= LIMIT; n += STEP)); do
  "$PY" -m benchmarks.quality --limit "$n" --max-tokens 128 --configs "members,specfuse,$VARIANTS" \
    --concurrency "$CONCURRENCY" --quiet
  echo "stage 2: IFEval N = $n done $(date -u +%H:%M:%S)"
done
bfcl 10
bfcl 30
