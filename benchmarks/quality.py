"""IFEval quality benchmark: the numbers of ``benchmarks/README.md`` (IFEval quality), run from the repo root.

    .venv/bin/python -m benchmarks.quality --limit 10 --max-tokens 128 --json

The harness is :mod:`specfuse_eval.quality` (also ``specfuse eval``); this entry point only names it
for the commands recorded in ``benchmarks/README.md``. Without ``--data`` it reads
``../shared/data/ifeval/dev.jsonl`` from the current directory.
"""

from __future__ import annotations

import sys

from specfuse_eval.quality import *  # noqa: F403 - the harness's names, for scripts that import this module
from specfuse_eval.quality import build_parser, main, run  # noqa: F401

PROG = "python -m benchmarks.quality"

if __name__ == "__main__":
    sys.exit(main(prog=PROG))
