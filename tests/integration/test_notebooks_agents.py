"""Execute notebooks/agents.ipynb end to end on the real default ensemble (offline).

The notebook runs a LangChain ``create_agent``, a LlamaIndex ``FunctionAgent`` and a structured
extraction; each section asserts its own result, so a failing agent fails the notebook.
"""

from __future__ import annotations

import pytest

from notebook_runner import code_outputs, run_notebook


@pytest.mark.slow
def test_agents_notebook_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = run_notebook("agents.ipynb", monkeypatch)
    outputs = code_outputs(notebook)
    text = "".join(out.get("text", "") for out in outputs)
    assert "LangChain answer:" in text and "LlamaIndex answer:" in text
    assert "extracted:" in text
    assert " wrote " in text  # who wrote which segment, for every part
    rich = [out.get("data", {}) for out in outputs if out.get("output_type") in ("display_data", "execute_result")]
    assert any('<span style="color:' in d.get("text/html", "") for d in rich)  # the colored transcripts
