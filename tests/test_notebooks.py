"""The walkthrough notebook executes headless, top to bottom, without errors.

(`notebooks/inspect_run.ipynb` needs a training work directory; tests/test_main.py runs it on one.)"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = [os.path.join(ROOT, "notebooks", "real_walkthrough.ipynb")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # A fresh kernel: one CPU device, no work directory from earlier runs.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("REAL_JAX_WORKDIR", str(tmp_path / "no_workdir"))
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "ŷ (full-vocabulary softmax" in text and "grad norm:" in text


def test_every_notebook_is_tested():
  tested = {"real_walkthrough.ipynb", "inspect_run.ipynb"}
  found = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))}
  assert found <= tested, f"notebooks without a test: {sorted(found - tested)}"
