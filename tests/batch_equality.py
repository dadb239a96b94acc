"""What "answers as alone" means for a request run concurrently with others, in each dtype.

float32: the same text, the same winners and the same scores to rounding (1e-6 in practice).
bfloat16 on CPU: attention over a left-padded batch sums in another order than over the row alone,
and bf16 keeps 8 bits, so a score can move by a rounding step; a greedy answer may then part from
the one alone, but only at a round whose vote was a near-tie. Up to that round every score agrees
to a rounding tolerance. A real batching bug (a wrong mask, position or cache row) breaks both.
"""

from __future__ import annotations

from typing import Any

import torch

FLOAT32_SCORE_TOLERANCE = 1e-4
BF16_SCORE_TOLERANCE = 0.05
NEAR_TIE = 0.15
"""The largest vote margin (winner's total minus the runner-up's, totals sum to 1) at which bf16 answers may part."""


def assert_answers_as_alone(alone: Any, together: Any, dtype: torch.dtype) -> None:
    """``together`` (a FusionResult from a concurrent run) answers as ``alone`` did, in ``dtype``."""
    if dtype == torch.float32:
        assert together.text == alone.text
        assert [e.winners for e in together.trace] == [e.winners for e in alone.trace]
    tolerance = FLOAT32_SCORE_TOLERANCE if dtype == torch.float32 else BF16_SCORE_TOLERANCE
    for one, other in zip(alone.trace, together.trace):
        if one.text != other.text:
            top, runner_up = sorted(one.totals, reverse=True)[:2]
            assert top - runner_up < NEAR_TIE, ("parted at a clear vote", one, other)
            return
        for row_alone, row_together in zip(one.scores, other.scores):
            for x, y in zip(row_alone, row_together):
                assert (x is None and y is None) or abs(x - y) < tolerance, (one, other)
    assert together.text == alone.text
