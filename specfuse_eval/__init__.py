"""Evaluation harnesses for SpecFuse: IFEval quality (``specfuse eval``), BFCL tool calling and the
paired statistics that compare a configuration with the best member alone.

- :mod:`specfuse_eval.quality`: the IFEval harness (answer, cache, score, report);
- :mod:`specfuse_eval.ifeval`: offline, rule-based IFEval scoring;
- :mod:`specfuse_eval.bfcl`: the BFCL tool-calling harness and its offline AST checker;
- :mod:`specfuse_eval.paired`: McNemar's exact test, bootstrap and Wilson intervals.

Their third-party dependencies come with ``pip install 'specfuse[eval]'`` and are imported only where
they are used; the data sets are not shipped: pass them with ``--data``.
"""

from __future__ import annotations

EVAL_EXTRA_HINT = "pip install 'specfuse[eval]'"


class MissingDependencyError(ImportError):
    """An optional dependency of the evaluation harnesses is not installed."""


class DataNotFoundError(FileNotFoundError):
    """An evaluation data set is not where the options say it is."""


def require(module: str, purpose: str, install: str = EVAL_EXTRA_HINT) -> None:
    """Raise :class:`MissingDependencyError` naming ``install`` when ``module`` cannot be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError(f"{purpose} needs the Python package {module!r}, which is not installed: "
                                     f"{install}")  # fmt: skip
