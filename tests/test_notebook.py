"""The Colab notebook runs top to bottom, headless, with its small settings."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_tpu.ipynb"


@pytest.mark.notebook
def test_colab_notebook_executes_headless_with_small_settings():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "device(s)" in outputs and "not on Colab" in outputs
    shown = [o for cell in notebook.cells for o in cell.get("outputs", []) if "data" in o]
    assert any("image/png" in o["data"] for o in shown)
    assert any("mean ± std" in o["data"].get("text/markdown", "") for o in shown)
