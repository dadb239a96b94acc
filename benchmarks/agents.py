"""Agent benchmark: the numbers of ``benchmarks/README.md`` (Agents), run from the repo root.

    nice -n 10 .venv/bin/python -m benchmarks.agents --json

The harness (task generator, scorer, variants, resumable JSONL, paired tests) is
:mod:`specfuse_eval.agents`; this entry point only names it for the commands recorded in
``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from specfuse_eval.agents import *
from specfuse_eval.agents import build_parser, main  # noqa: F401

PROG = "python -m benchmarks.agents"

if __name__ == "__main__":
    sys.exit(main(prog=PROG))
