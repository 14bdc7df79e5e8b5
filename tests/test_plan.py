"""`python -m real_jax.tools.plan`: the run's programs compiled ahead of time for a TPU topology
(libtpu from the test extra; no TPU needed), per-device memory against the chip's HBM."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = [sys.executable, "-m", "real_jax.tools.plan", "--config=configs/synthetic.py:runlocal",
        "--topology=v5e:2x2", "--set", "model.preset=tiny", "--set", "mesh.data=-1"]


def _plan(tmp_path, *extra):
  out = tmp_path / "plan.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(BASE + [f"--json={out}", *extra], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  return r, (json.loads(out.read_text()) if out.exists() else None)


def test_plan_fits_a_tiny_run_on_v5e(tmp_path):
  r, rep = _plan(tmp_path)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert rep["chips"] == 4 and rep["device_kind"].startswith("TPU v5")
  assert abs(rep["hbm_bytes"] / 2**30 - 15.75) < 0.01  # the compiler's own figure for v5e
  names = [p["name"] for p in rep["programs"]]
  assert names == ["warmup_step", "rl_step", "rollout_sampler", "rollout_scoring", "eval_sampler"]
  for p in rep["programs"]:
    assert p["fits"] and not p["error"] and 0 < p["peak"] < rep["hbm_bytes"] and p["argument"] > 0
  # The RL step holds the parameters and both Adam moments (float32): at least 3x the params.
  step = next(p for p in rep["programs"] if p["name"] == "rl_step")
  sampler = next(p for p in rep["programs"] if p["name"] == "rollout_sampler")
  assert step["argument"] > 2.5 * sampler["argument"]
  assert "| rl_step |" in r.stdout and "yes" in r.stdout
  # --summarize: one row per report, the peaks in GiB (the README's plan table).
  t = subprocess.run([sys.executable, "-m", "real_jax.tools.plan", "--summarize",
                      str(tmp_path / "plan.json")], cwd=ROOT, capture_output=True, text=True)
  assert t.returncode == 0, t.stderr[-2000:]
  row = t.stdout.strip().splitlines()[-1]
  assert row.startswith("| tiny | real | v5e:2x2 (4 x TPU v5") and row.endswith("| yes |")


def test_plan_reports_what_does_not_fit_and_exits_1(tmp_path):
  # 32768 evaluation prompts x 4224 cached positions: ~21 GiB of KV cache per v5e chip.
  r, rep = _plan(tmp_path, "--only=eval_sampler", "--set", "eval.batch_size=32768",
                 "--set", "eval.max_response_len=4096")
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  (p,) = rep["programs"]
  assert not p["fits"] and "exceeds available HBM" in p["error"]
  assert "does not fit: eval_sampler" in r.stderr and "**no**" in r.stdout


def test_plan_rejects_an_unknown_topology_and_field(tmp_path):
  r, _ = _plan(tmp_path, "--topology=v9z:1x1")
  assert r.returncode == 2 and "topology 'v9z:1x1' unavailable" in r.stderr
  r, _ = _plan(tmp_path, "--set", "rl.no_such_field=3")
  assert r.returncode == 2 and "unknown config field 'rl.no_such_field'" in r.stderr


def test_plan_suggest_bisects_to_the_largest_setting_that_fits(tmp_path):
  """--suggest: the RL micro-batch among the accepted values (multiples of the 4 batch shards
  dividing the 16-row mini-batch); every tried value up to the answer fits, none above it."""
  r, rows = _plan(tmp_path, "--suggest", "--only=rl_step")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  (row,) = rows
  assert row["program"] == "rl_step" and row["field"] == "rl.micro_batch_size"
  limit = (1 - row["headroom"]) * row["hbm_bytes"]
  tried = {int(v): p for v, p in row["tried"].items()}
  assert row["best"] == 16 and set(tried) <= {4, 8, 16} and 16 in tried
  assert all(p is not None and p <= limit for v, p in tried.items() if v <= row["best"])
  assert tried[8] < tried[16]  # memory grows with the micro-batch (the search's premise)
  assert "--config.rl.micro_batch_size=16" in r.stdout
