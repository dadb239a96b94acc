"""Execute a notebook of this repo end to end with nbclient, offline, on this checkout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(name: str, monkeypatch: Any) -> Any:
    """Run ``notebooks/<name>``; any failing cell raises ``CellExecutionError``. Returns the executed notebook."""
    # The kernel must import this checkout and must not try the network (HF Hub).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return notebook


def code_outputs(notebook: Any) -> list[dict[str, Any]]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
