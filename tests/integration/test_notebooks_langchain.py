"""Execute notebooks/langchain_quickstart.ipynb end to end on the real default ensemble (offline)."""

from __future__ import annotations

import pytest

from notebook_runner import code_outputs, run_notebook


@pytest.mark.slow
def test_langchain_quickstart_notebook_runs(monkeypatch):
    notebook = run_notebook("langchain_quickstart.ipynb", monkeypatch)  # each section asserts its own result
    outputs = code_outputs(notebook)
    text = "".join(out.get("text", "") for out in outputs)
    assert "Paris" in text  # the LCEL chain
    assert "answer:" in text and "Brackenholt" in text  # the RAG chain
    assert " wrote " in text and "round  1:" in text  # per-segment provenance from astream_events
    assert "rejected:" in text and "'image'" in text  # bad input fails loudly
    rich = [out.get("data", {}) for out in outputs if out.get("output_type") in ("display_data", "execute_result")]
    assert any("<span style=\"color:" in d.get("text/html", "") for d in rich)  # the colored transcript
    assert any("image/png" in d for d in rich)  # the wins-per-member bar chart
