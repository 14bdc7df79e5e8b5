"""experiments/synthetic_table/run.py end to end on runlocal configs: runs, table, plots."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from real_jax.evaluate import check_markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "synthetic_table", "run.py")


def _fast_env(tmp_path):
  """The study's runs are separate processes: give them the suite's fast compiles (lower XLA
  optimisation effort, one persistent compilation cache shared by the runs)."""
  return dict(os.environ, JAX_EXEC_TIME_OPTIMIZATION_EFFORT="-1",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")


def test_study_runs_seeds_and_writes_the_table(tmp_path):
  out = tmp_path / "out"
  cmd = [sys.executable, SCRIPT, f"--root={tmp_path / 'runs'}", f"--out={out}", "--seeds=0,1",
         "--only=base,warmup,real_b0_l1", "--config_arg=runlocal",
         "--extra=--config.log.tensorboard=false"]
  env = _fast_env(tmp_path)
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "6/6 done" in r.stdout and "ETA" in r.stdout
  md = (out / "results.md").read_text()
  res = json.loads((out / "results.json").read_text())
  assert list(res["methods"]) == ["base", "warmup", "real_b0_l1"]
  for name, m in res["methods"].items():
    assert m["seeds"] == [0, 1]
    e = m["splits"]["test"]["rail"]
    assert len(e["mse"]["per_seed"]) == 2
    assert e["mse"]["mean"] == pytest.approx(np.mean(e["mse"]["per_seed"]))
    lo, hi = e["ci"]["mse"]  # the items bootstrap of the seed-mean MSE brackets the estimate
    assert lo < e["mse"]["mean"] < hi, (name, lo, e["mse"]["mean"], hi)
    if name != "base":  # the untrained base has no spread in its predictions: Pearson is NaN
      lo, hi = e["ci"]["pearson"]
      assert lo < e["pearson"]["mean"] < hi, (name, lo, e["pearson"]["mean"], hi)
  assert set(res["ceiling"]) == {"test", "test_ood_hard", "test_ood_rubric"}
  # The diagnostics are the first and last RL updates' values in each seed's metrics.jsonl,
  # averaged over seeds.
  diag = res["methods"]["real_b0_l1"]["diagnostics"]
  logged = []
  for seed in (0, 1):
    with open(tmp_path / "runs" / f"real_b0_l1_s{seed}" / "metrics.jsonl") as f:
      logged.append([r for r in map(json.loads, f) if r.get("stage") == "rl"])
  for key in ("signal_regression", "signal_binary"):
    assert diag[key]["first"] == pytest.approx(np.mean([rl[0][key] for rl in logged]))
    assert diag[key]["last"] == pytest.approx(np.mean([rl[-1][key] for rl in logged]))
  # Every table parses, has the methods and the Bayes ceiling row on the RAIL tables.
  tables = [t for t in md.split("\n\n") if t.startswith("|")]
  assert len(tables) >= 9
  for t in tables:
    check_markdown_table(t)
  assert md.count("Bayes ceiling") == 4 and "REAL β=0 λ=1" in md and " ± " in md
  for png in ("curves.png", "pred_vs_true.png"):
    assert (out / png).stat().st_size > 10_000
  # A second invocation finds every run finished and only rebuilds the outputs.
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert r.returncode == 0 and "0 runs to do (6 already finished)" in r.stdout
