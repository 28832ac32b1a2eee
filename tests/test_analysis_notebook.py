"""The walkthrough notebook runs end to end on the synthetic demo table."""

from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = (Path(__file__).resolve().parents[1] / "analysis" / "notebooks"
            / "optimal_sparsity_walkthrough.ipynb")


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  params[0].source = f"RESULTS_PATH = None\nNUM_RESAMPLES = 50\nOUT_DIR = {str(tmp_path)!r}"
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]
  assert not errors
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if o.output_type == "stream")
  assert "SYNTHETIC" in text
  assert (tmp_path / "isoflop_total_params.png").exists()
  assert (tmp_path / "generalization_gaps.pdf").exists()
