"""experiments/synthetic_table: the sweep's choice on validation, and the study end to end on
runlocal configs (two seeds, the paired intervals, the precondition, the rollout signal)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from real_jax import bootstrap
from real_jax.evaluate import check_markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "experiments", "synthetic_table")
SCRIPT = os.path.join(HERE, "run.py")
sys.path.insert(0, HERE)
import run as study  # noqa: E402
import sweep  # noqa: E402


def _fast_env(tmp_path):
  """The study's runs are separate processes: give them the suite's fast compiles (lower XLA
  optimisation effort, one persistent compilation cache shared by the runs)."""
  return dict(os.environ, JAX_EXEC_TIME_OPTIMIZATION_EFFORT="-1",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")


def test_committed_settings_were_chosen_on_validation():
  """Committed study results come with the chosen.json they were run with, and every entry of
  it was chosen on the validation split; without a chosen.json there are no results."""
  results = os.path.join(HERE, "results.json")
  if not os.path.exists(study.CHOSEN):
    assert not os.path.exists(results), "results.json without the chosen.json it used"
    return
  chosen = study.load_chosen(study.CHOSEN)
  assert set(study.METHODS_CHOSEN) <= set(chosen)
  for method, c in chosen.items():
    assert c["split"] == "validation", method
    assert c["metric"] == sweep.METRIC and np.isfinite(c["value"])
  # The committed sweep table holds the chosen candidates with the same values.
  rows = json.load(open(os.path.join(HERE, "sweep.json")))["candidates"]
  for method, c in chosen.items():
    match = [r for r in rows if r["settings"] == c["settings"] and f"{r['run']}_s0" == c["run"]]
    assert match and match[0]["value"] == c["value"], method
  if os.path.exists(results):
    assert json.load(open(results))["chosen"] == chosen


def test_study_refuses_settings_chosen_elsewhere(tmp_path, capsys):
  path = tmp_path / "chosen.json"
  _chosen_runlocal(path)
  chosen = json.loads(path.read_text())
  chosen["real"]["split"] = "test"
  path.write_text(json.dumps(chosen))
  out = f"--out={tmp_path / 'out'}"
  assert study.main([f"--chosen={path}", f"--root={tmp_path}", "--aggregate", out]) == 2
  assert "settings of ['real'] were chosen on ['test'], not on the validation split" in (
      capsys.readouterr().err)
  chosen["real"]["split"] = "validation"
  tract = chosen.pop("tract")
  path.write_text(json.dumps(chosen))
  assert study.main([f"--chosen={path}", f"--root={tmp_path}", "--aggregate", out]) == 2
  assert "has no settings for ['tract']" in capsys.readouterr().err
  chosen["tract"] = tract
  path.write_text(json.dumps(chosen))
  assert study.main([f"--chosen={path}", f"--root={tmp_path}", "--aggregate", out]) == 2
  assert "no finished run" in capsys.readouterr().err  # nothing to aggregate: nothing written
  assert not (tmp_path / "out").exists()
  assert study.main([f"--chosen={path}", "--seeds=0,x", out]) == 2
  assert "--seeds" in capsys.readouterr().err


def _fake_run(root, name, stage, curve, last):
  """A sweep workdir with validation evaluations: eval/<stage>_stepN.json and _final_val.json."""
  d = root / f"{name}_s0" / "eval"
  d.mkdir(parents=True)
  for step, v in curve.items():
    fn = f"{stage}_final_val.json" if step == last else f"{stage}_step{step:06d}.json"
    summ = {"splits": {"val": {"rail": {"pearson": v}}, "test": {"rail": {"pearson": 0.99}}}}
    (d / fn).write_text(json.dumps({"summary": summ}))


def test_sweep_chooses_the_best_validation_candidate(tmp_path):
  """Each method's choice is its best validation value over LRs and budgets (prefixes of one
  run), never a test value; budgets that were not candidates are not chosen."""
  g = sweep.Grid()
  specs = sweep.stage_a(g)
  rng = np.random.default_rng(0)
  want = {}
  for name, (job, stage, last, settings, budgets) in specs.items():
    steps = sorted(set(budgets) | {50})  # 50: an evaluation that is not a candidate budget
    curve = {s: float(rng.uniform(0, 0.8)) for s in steps}
    curve[50] = 0.95
    _fake_run(tmp_path, name, stage, curve, last)
    for b in budgets:
      want[(name, b)] = curve[b]
  rows = sweep.candidates(str(tmp_path), specs)
  assert {(r["run"], r["settings"][sweep.BUDGET_KEY[specs[r["run"]][1]]]): r["value"]
          for r in rows} == want
  for method in ("sft", "raft", "tract"):
    pick = sweep.best([r for r in rows if r["method"] == method])
    mine = {k: v for k, v in want.items() if specs[k[0]][0].method == method}
    assert pick["value"] == max(mine.values()) < 0.95
    c = sweep._choice(pick)
    assert c["split"] == "validation" and c["metric"] == "rail/pearson"
  with pytest.raises(RuntimeError, match="no finite validation value"):
    sweep.best([{"run": "x", "value": float("nan")}])


def _chosen_runlocal(path):
  """A chosen.json for runlocal runs."""
  c = {"warmup": {"train.lr": 0.003, "train.steps": 40},
       "raft": {"train.lr": 0.003, "train.steps": 2},
       "tract": {"train.lr": 0.003, "tract.stage1_steps": 40, "tract.stage2_steps": 2},
       "grpo": {"rl.lr": 0.001, "rl.steps": 2},
       "real": {"rl.lr": 0.001, "rl.steps": 2, "rl.beta": 0.0, "rl.lam": 1, "rl.shaping": "prob"}}
  path.write_text(json.dumps({m: {"settings": s, "split": "validation", "metric": "rail/pearson",
                                  "value": 0.5, "run": "x"} for m, s in c.items()}))


def test_sweep_then_study_on_two_seeds(tmp_path):
  """The committed commands end to end on runlocal configs: sweep.py --smoke chooses on the
  validation split and writes chosen.json; run.py reads it and runs two seeds (the sweep's
  seed-0 warm-up reused), then the tables, intervals, precondition and rollout signal."""
  out, runs, chosen = tmp_path / "out", tmp_path / "runs", tmp_path / "sweep"
  env = _fast_env(tmp_path)
  common = [f"--root={runs}", "--config_arg=runlocal", "--extra=--config.log.tensorboard=false"]
  r = subprocess.run([sys.executable, os.path.join(HERE, "sweep.py"), "--smoke", f"--out={chosen}",
                      *common], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  picked = json.loads((chosen / "chosen.json").read_text())
  assert set(picked) == set(study.METHODS_CHOSEN)
  assert {c["split"] for c in picked.values()} == {"validation"}
  # Every choice is the best validation value among its method's candidates in sweep.json.
  rows = json.loads((chosen / "sweep.json").read_text())["candidates"]
  for m, method in (("warmup", "sft"), ("raft", "raft"), ("tract", "tract"), ("grpo", "grpo"),
                    ("real", "real")):
    vals = [c["value"] for c in rows if c["method"] == method and np.isfinite(c["value"])]
    assert picked[m]["value"] == max(vals), m
  assert "**" in (chosen / "sweep.md").read_text()
  cmd = [sys.executable, SCRIPT, f"--out={out}", "--seeds=0,1", f"--chosen={chosen / 'chosen.json'}",
         "--only=warmup,real", "--ablation_seeds=", *common]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "3 runs to do (1 already finished)" in r.stdout and "3/3 done" in r.stdout
  assert "ETA" in r.stdout
  md = (out / "results.md").read_text()
  res = json.loads((out / "results.json").read_text())
  assert list(res["methods"]) == ["warmup", "real"]
  preds = {n: [study.jobs_lib.load_predictions(str(tmp_path / "runs" / f"{n}_s{s}"))
               for s in (0, 1)] for n in ("real", "warmup")}
  for name, m in res["methods"].items():
    assert m["seeds"] == [0, 1]
    e = m["splits"]["test"]["rail"]
    assert len(e["mse"]["per_seed"]) == 2
    assert e["mse"]["mean"] == pytest.approx(np.mean(e["mse"]["per_seed"]))
    lo, hi = e["mse"]["ci"]  # seeds, then items: the interval brackets the estimate
    assert lo < e["mse"]["mean"] < hi, (name, lo, e["mse"]["mean"], hi)
  assert np.mean([p["test"]["valid"].mean() for p in preds["real"]]) > 0.5  # CoTs reach a score
  # The paired interval REAL − warm-up is the bootstrap's over the runs' own predictions.
  target = study.seed_matrix(preds["real"], "test", "target")
  want = bootstrap.paired_difference("pearson", study.seed_matrix(preds["real"], "test", "rail"),
                                     study.seed_matrix(preds["warmup"], "test", "rail"), target,
                                     n_boot=study.N_BOOT)
  got = res["pairs"]["real-warmup"]["splits"]["test"]["rail"]["pearson"]
  assert got["estimate"] == pytest.approx(want.estimate) and got["low"] == pytest.approx(want.low)
  assert set(res["pairs"]) == {"real-warmup"}
  assert "| REAL − CE warm-up (SFT) |" in md
  # The precondition and the rollout signal under the warm-up, per split.
  assert res["gate"]["range"] == [0.2, 0.7] and set(res["gate"]["ood"]) == {
      "test_ood_hard", "test_ood_rubric"}
  assert "Precondition (" in md and "the warm-up's entirely-right CoTs: ID" in md
  sig = res["signal"]["splits"]
  assert set(sig) == {"test", "test_ood_hard", "test_ood_rubric"}
  for v in sig.values():
    assert v["prompts"] == 8 and v["group_size"] == 4 and 0 <= v["signal_regression"] <= 1
    assert v["entropy"] > 0
  # RL diagnostics carry the entropy of the first and last update, as logged.
  diag = res["methods"]["real"]["diagnostics"]
  logged = [study.rl_rows(str(tmp_path / "runs" / f"real_s{s}")) for s in (0, 1)]
  for key in ("signal_regression", "signal_binary", "entropy"):
    assert diag[key]["first"] == pytest.approx(np.mean([rl[0][key] for rl in logged]))
    assert diag[key]["last"] == pytest.approx(np.mean([rl[-1][key] for rl in logged]))
  tables = [t for t in md.split("\n\n") if t.startswith("|")]
  assert len(tables) >= 12
  for t in tables:
    check_markdown_table(t)
  assert md.count("Bayes ceiling") == 4 and " ± " in md
  for png in ("curves.png", "pred_vs_true.png"):
    assert (out / png).stat().st_size > 10_000
  # A second invocation finds every run finished and only rebuilds the outputs.
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert r.returncode == 0 and "0 runs to do (4 already finished)" in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("rec", [
    {"instruction": "Compute each sum. a) 4+8 b) 0+6 c) 5+5 d) 1+9",
     "response": "a) 12 b) 13 c) 11 d) 9"},
    {"instruction": "Compute each sum. c) 5+5 a) 4+8 d) 1+9 b) 0+6",  # shuffle_items
     "response": "b) 13 d) 9 a) 12 c) 11"}])
def test_cot_is_right_checks_every_step(rec):
  good = ("a ) 4 + 8 = 12 vs 12 right . b ) 0 + 6 = 6 vs 13 wrong . c ) 5 + 5 = 10 vs 11 close . "
          "d ) 1 + 9 = 10 vs 9 close . So the overall score is")
  assert study.cot_is_right(rec, good)
  for bad in (good.replace("= 12 vs", "= 11 vs"), good.replace("13 wrong", "13 close"),
              good.replace("b ) 0 + 6", "c ) 0 + 6"), good.replace("5 + 5", "5 + 4"),
              good.replace("vs 9 close", "vs 8 close"), good.split(" d )")[0]):
    assert not study.cot_is_right(rec, bad), bad


def test_cot_steps_name_the_part_that_is_wrong():
  rec = {"instruction": "Compute each sum. a) 4+8 b) 0+6 c) 5+5 d) 1+9",
         "response": "a) 12 b) 13 c) 11 d) 9"}
  cot = ("a ) 4 + 8 = 12 vs 12 right . b ) 0 + 5 = 5 vs 13 wrong . c ) 5 + 5 = 9 vs 11 wrong . "
         "d ) 1 + 9 = 10 vs 8 close .")
  assert study.cot_steps(rec, cot) == [
      {"label": "a", "item": True, "sum": True, "answer": True, "verdict": True},
      {"label": "b", "item": False, "sum": True, "answer": True, "verdict": True},
      {"label": "c", "item": True, "sum": False, "answer": True, "verdict": True},
      {"label": "d", "item": True, "sum": True, "answer": False, "verdict": False}]


def test_a_run_made_with_other_settings_is_refused_not_reused(tmp_path):
  """A finished run is reused only when its run.json has the job's settings (a chosen.json
  that changed since must not silently reuse old runs)."""
  jobs = study.jobs_lib
  wd = tmp_path / "warmup_s0"
  wd.mkdir()
  (wd / "run.json").write_text(json.dumps({"config": {"train": {"lr": 0.001, "steps": 300},
                                                      "raft": {"renormalize": False}}}))
  (wd / "results.json").write_text(json.dumps({"rows": [{"name": "CE warm-up (SFT)"}]}))
  same = jobs.warmup_job({"train.lr": 0.001, "train.steps": 300, "raft.renormalize": False})
  assert jobs.finished(same, str(wd))
  for other in ({"train.lr": 0.003}, {"train.steps": 400}, {"raft.renormalize": True}):
    with pytest.raises(jobs.JobError, match=r"was run with .*; remove it or use another --root"):
      jobs.finished(jobs.warmup_job(other), str(wd))
  with pytest.raises(jobs.JobError, match="--jobs 0"):
    jobs.run_jobs(str(tmp_path), {"warmup": same}, [("warmup", 0)], n_jobs=0)


@pytest.mark.parametrize("ood,met", [((0.3, 0.5), True), ((0.1, 0.5), False), ((0.3, 0.8), False),
                                     ((0.3, 0.65), False)])
def test_precondition_gate(ood, met):
  """Met only when each OOD split's share of entirely-right CoTs lies in 20-70% and below ID."""
  agg = {"methods": {"warmup": {"cot_right": {"test": 0.6, "test_ood_hard": ood[0],
                                              "test_ood_rubric": ood[1]}}}}
  g = study.gate(agg)
  assert g["met"] is met and g["in_domain"] == 0.6
  assert ("(MET)" if met else "(NOT MET)") in study.gate_line(g)
  assert study.gate({"methods": {}}) == {} and "not measured" in study.gate_line({})
