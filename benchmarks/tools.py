"""BFCL tool-calling benchmark: the numbers of ``benchmarks/README.md`` (BFCL), run from the repo root.

    .venv/bin/python -m benchmarks.tools --limit 10 --max-tokens 96 --json

The harness is :mod:`specfuse_eval.bfcl`; this entry point only names it for the commands recorded in
``benchmarks/README.md``. Without ``--data`` it reads ``../shared/data/bfcl`` from the current directory.
"""

from __future__ import annotations

import sys

from specfuse_eval.bfcl import *  # noqa: F403 - the harness's names, for scripts that import this module
from specfuse_eval.bfcl import build_parser, main, run  # noqa: F401

PROG = "python -m benchmarks.tools"

if __name__ == "__main__":
    sys.exit(main(prog=PROG))
