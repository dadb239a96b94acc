"""Execute notebooks/llamaindex_quickstart.ipynb end to end on the real default ensemble (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("llama_index.retrievers.bm25")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "llamaindex_quickstart.ipynb"


@pytest.mark.slow
def test_llamaindex_quickstart_notebook_runs(monkeypatch):
    # The kernel must import this checkout and must not try the network (HF Hub).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell (each section asserts its result)
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "Tibbet" in outputs
    assert "wrote" in outputs  # the per-segment log: which member wrote each segment
    assert "answer:" in outputs
