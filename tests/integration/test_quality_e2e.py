"""End to end: `python -m specfuse_eval.quality` on one IFEval prompt with a real member, then resumed from cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
import if_verifiable  # noqa: F401 - a dev dependency: fail loudly if missing

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "ifeval_sample.jsonl"


def test_one_prompt_one_config_end_to_end_and_resumed(tmp_path: Path) -> None:
    # Run from a directory that is not the checkout: the harness needs nothing but its options.
    argv = [sys.executable, "-m", "specfuse_eval.quality", "--data", str(SAMPLE), "--limit", "1",
            "--max-tokens", "16", "--configs", "smollm2-135m-instruct", "--results", str(tmp_path / "results"),
            "--json"]  # fmt: skip

    def run() -> tuple[dict, str]:
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    first, log = run()
    assert "new" in log
    (row,) = first["configs"]
    assert first["n"] == 1 and row["config"] == "smollm2-135m-instruct" and row["n"] == 1
    assert row["calls_per_round"] == 1.0 and row["rounds_per_answer"] >= 1
    assert 0.0 <= row["prompt_loose"] <= 1.0 and row["prompt_strict"] <= row["prompt_loose"]
    run_dir = Path(first["run_dir"])
    # a member alone is cached under a run id of that member only (shared by every ensemble it is in)
    (cached,) = (tmp_path / "results").glob("*/smollm2-135m-instruct/*.json")
    assert json.loads(cached.read_text())["response"]
    assert (run_dir / "results.md").exists() and (run_dir / "quality.png").stat().st_size > 1000

    second, log = run()  # resumed: nothing is generated again, the figures are identical
    assert "cached" in log and " new " not in log
    assert second["configs"] == first["configs"]
