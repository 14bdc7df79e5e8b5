"""The notebooks execute headless, top to bottom, without errors, and print what they claim.

(`02_inspect_run.ipynb` and `03_score_a_dataset.ipynb` need a training work directory:
tests/test_lora.py (on its RL run) and tests/test_judging.py run them on one.)"""

import glob
import os

import pytest

from run_helpers import png_count, run_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# notebook -> text its outputs must contain
NOTEBOOKS = {
    "real_walkthrough.ipynb": ("ŷ (full-vocabulary softmax", "grad norm:"),
    "01_objectives.ipynb": ("REAL      : RAIL Pearson 1.0000", "binary RL : RAIL Pearson 0.92",
                            "beta = 0: refine-term grad norm 0.0",
                            "token-mean(beta=0.3) x L = sequence-sum(beta=0.3 x L=3.62): True"),
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, tmp_path, monkeypatch):
  # A fresh kernel: one CPU device, no work directory from earlier runs.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("REAL_JAX_WORKDIR", str(tmp_path / "no_workdir"))
  outputs, text = run_notebook(name)
  for marker in NOTEBOOKS[name]:
    assert marker in text, marker
  assert png_count(outputs) or name == "real_walkthrough.ipynb"


def test_every_notebook_is_tested():
  tested = set(NOTEBOOKS) | {"02_inspect_run.ipynb", "03_score_a_dataset.ipynb"}
  found = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))}
  assert found <= tested, f"notebooks without a test: {sorted(found - tested)}"
