"""Execute notebooks/llamaindex_quickstart.ipynb end to end on the real default ensemble (offline)."""

from __future__ import annotations

import pytest

from notebook_runner import code_outputs, run_notebook


@pytest.mark.slow
def test_llamaindex_quickstart_notebook_runs(monkeypatch):
    notebook = run_notebook("llamaindex_quickstart.ipynb", monkeypatch)  # each section asserts its own result
    text = "".join(out.get("text", "") for out in code_outputs(notebook))
    assert "Tibbet" in text
    assert "wrote" in text  # the per-segment log: which member wrote each segment
    assert "answer:" in text
