"""`python -m real_jax.tools.plan`: the run's programs compiled ahead of time for a TPU topology
(libtpu from the test extra; no TPU needed), per-device memory against the chip's HBM; the
committed reports behind docs/scale.md's tables; the GPU estimate and the GPU suite's smoke run."""
import json
import os
import subprocess
import sys

from real_jax.tools import memory_table, plan
from real_jax.train import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = [sys.executable, "-m", "real_jax.tools.plan", "--config=configs/synthetic.py:runlocal",
        "--topology=v5e:2x2", "--set", "model.preset=tiny", "--set", "mesh.data=-1"]


def _plan(tmp_path, *extra):
  out = tmp_path / "plan.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # libtpu's lock
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
  # --summarize: one row per report, the peaks in GiB (docs/scale.md's plan table).
  t = subprocess.run([sys.executable, "-m", "real_jax.tools.plan", "--summarize",
                      str(tmp_path / "plan.json")], cwd=ROOT, capture_output=True, text=True)
  assert t.returncode == 0, t.stderr[-2000:]
  row = t.stdout.strip().splitlines()[-1]
  # model.attention=auto compiles the TPU default: splash, in every program above.
  assert rep["attention"] == "splash"
  assert row.startswith("| tiny (splash attention) | real | v5e:2x2 (4 x TPU v5")
  assert row.endswith("| yes |")


def test_plan_reports_what_does_not_fit_and_exits_1(tmp_path):
  # 32768 evaluation prompts x 4224 cached positions: ~21 GiB of KV cache per v5e chip.
  r, rep = _plan(tmp_path, "--only=eval_sampler", "--set", "model.attention=chunked",
                 "--set", "eval.batch_size=32768",
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
  r, rows = _plan(tmp_path, "--suggest", "--only=rl_step", "--set", "model.attention=chunked")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  (row,) = rows
  assert row["program"] == "rl_step" and row["field"] == "rl.micro_batch_size"
  limit = (1 - row["headroom"]) * row["hbm_bytes"]
  tried = {int(v): p for v, p in row["tried"].items()}
  assert row["best"] == 16 and set(tried) <= {4, 8, 16} and 16 in tried
  assert all(p is not None and p <= limit for v, p in tried.items() if v <= row["best"])
  assert tried[8] < tried[16]  # memory grows with the micro-batch (the search's premise)
  assert "--config.rl.micro_batch_size=16" in r.stdout


# ---------------------------------------------------------------------------------------------
# The committed TPU reports (docs/plan/*.json, `bash docs/plan/make.sh`), docs/scale.md's tables made
# from them, and the GPU estimate calibrated on them.

PLAN_DIR = os.path.join(ROOT, "docs", "plan")


def _reports(prefix):
  names = sorted(n for n in os.listdir(PLAN_DIR) if n.startswith(prefix) and n.endswith(".json"))
  out = []
  for n in names:
    with open(os.path.join(PLAN_DIR, n)) as f:
      out.append(json.load(f))
  return out


def _doc_block(tag):
  text = open(os.path.join(ROOT, "docs", "scale.md")).read()
  start, end = f"<!-- PLAN_TABLE:{tag} -->\n", f"\n<!-- /PLAN_TABLE:{tag} -->"
  return text[text.index(start) + len(start):text.index(end)].strip()


def test_doc_plan_tables_are_the_committed_reports():
  """docs/scale.md's tables are `plan --summarize` of the reports, every shipped config fits its
  named slice with the headroom, and the reports cover every size and the SFT-family steps."""
  rl, sup = _reports("rl-"), _reports("sup-")
  assert _doc_block("rl") == plan.summary_table(rl)
  assert _doc_block("sup") == plan.summary_table(sup)
  sizes = ("0.6b", "1.7b", "4b", "8b", "14b", "32b", "mistral-7b")  # configs/prometheus.py
  assert {r["model"] for r in rl} == {config_lib.load_config(
      f"configs/prometheus.py:size={s}").model.preset for s in sizes}
  assert {r["method"] for r in sup} == {"sft", "raft", "tract"}
  for r in rl + sup:
    assert r["fits"] and r["headroom"] >= 0.1, (r["model"], r["topology"])
    assert all(p["peak"] > 0 and not p["error"] for p in r["programs"])


def test_doc_attention_reports_are_the_committed_ones():
  """docs/scale.md's 8b reports with the chunked and the splash attention are `plan`'s own
  markdown of the committed reports; both backends compiled for v5p and fit."""
  reports = _reports("attention-8b-")
  assert [r["attention"] for r in reports] == ["chunked", "splash"]
  assert _doc_block("attention") == "\n\n".join(plan.markdown(r) for r in reports)
  for r in reports:
    assert r["fits"] and {p["name"] for p in r["programs"]} == {"rl_step", "rollout_sampler"}
    assert all(p["peak"] > 0 and not p["error"] for p in r["programs"])


def test_doc_lora_reports_are_the_committed_ones():
  """docs/scale.md's LoRA table is `plan --summarize` of the committed 8b reports on a v5e-8:
  full fine-tuning's train step does not fit, the LoRA and QLoRA runs fit with the headroom."""
  reports = _reports("lora-")
  assert _doc_block("lora") == plan.summary_table(reports)
  full, lora, qlora = reports
  assert not full["fits"] and lora["fits"] and qlora["fits"]
  assert "lora=16" in lora["config"] and "qlora" in qlora["config"]
  for r in (lora, qlora):
    assert r["topology"] == "v5e:2x4" and r["headroom"] >= 0.1
    assert {p["name"] for p in r["programs"]} >= {"rl_step", "rollout_sampler"}
    assert all(p["peak"] > 0 and not p["error"] for p in r["programs"])


def _analytic_vs_compiled():
  for r in _reports("rl-") + _reports("sup-"):
    c = config_lib.load_config(r["config"])
    for o in r["overrides"]:
      key, _, value = o.partition("=")
      config_lib.set_field(c, key, value)
    est = memory_table.program_estimate(c, r["mesh"])
    for p in r["programs"]:
      yield r, p["name"], sum(est[p["name"]].values()), p["peak"]


def test_gpu_estimate_is_calibrated_on_the_tpu_compiles():
  """The analytic model tracks the compiler (within 0.5x-2x on every program of every report);
  CALIBRATION is the largest compiled/analytic ratio per program kind, rounded up, so the
  calibrated estimate covers every compiled peak it was checked against."""
  triples = list(_analytic_vs_compiled())
  assert len(triples) >= 30
  for r, name, analytic, compiled in triples:
    assert 0.5 < compiled / analytic < 2.0, (r["model"], r["topology"], name, compiled / analytic)
    assert memory_table.calibrated(name, analytic, memory_table.CALIBRATION) >= compiled
  factors = memory_table.calibrate([(n, a, c) for _, n, a, c in triples])
  assert set(factors) == set(memory_table.CALIBRATION)
  for kind, f in factors.items():
    assert f <= memory_table.CALIBRATION[kind] < f + 0.011, (kind, f)


def test_gpu_plan_prints_a_labelled_estimate(tmp_path):
  cmd = [sys.executable, "-m", "real_jax.tools.plan", "--config=configs/prometheus.py:size=8b"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  r = subprocess.run(cmd + ["--gpu=h100:8", f"--json={tmp_path}/g.json"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("ESTIMATE") and "| rollout_sampler |" in r.stdout
  rep = json.loads((tmp_path / "g.json").read_text())
  assert rep["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and rep["mem_fraction"] == 0.75
  assert abs(rep["usable_bytes"] - 0.75 * 81559 * 2**20) < 2**20
  names = [p["name"] for p in rep["programs"]]
  assert names == ["rl_step", "rollout_sampler", "rollout_scoring", "eval_sampler"]
  # One H100 cannot hold the 8b REAL step (params + AdamW alone are 8.2e9 x 12 bytes).
  r = subprocess.run(cmd + ["--gpu=h100:1"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "does not fit: rl_step" in r.stderr
  r = subprocess.run(cmd + ["--gpu=v100"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert r.returncode == 2 and "expected KIND:COUNT" in r.stderr


def test_gpu_suite_smoke_on_cpu(tmp_path):
  """benchmarks/gpu_suite.sh --smoke: the GPU suite's code on the CPU, its JSON complete."""
  env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu")
  r = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  res = json.loads((tmp_path / "gpu_suite.json").read_text())
  assert res["smoke"] and [d["rows"] for d in res["decode"]] == [8]
  assert all(d["tokens_per_s"] > 0 and d["decode_step_ms"] > 0 for d in res["decode"])
  # Each sampler program (the full run, the prefill) is compiled once: timed and measured alike.
  assert [d["compiles"] for d in res["decode"]] == [2]
  assert res["train_step"]["s"] > 0 and res["train_step"]["tflops"] > 0
  assert [m["program"] for m in res["memory"]] == ["rollout_sampler (8 rows)", "rl_step"]
  for m in res["memory"]:
    assert 0.5 < m["ratio"] < 2.0, m  # the plan estimate against XLA's compiled peak
  assert "REAL train step" in r.stdout and "plan estimate" in r.stdout
  att = res["attention"]  # cudnn joins chunked and xla on a GPU
  assert att["backends"] == ["chunked", "xla"] and set(att["train_step_s"]) == {"chunked", "xla"}
  assert att["equal"] and all(row["xla"]["ok"] for row in att["equality_bf16"].values())


def test_the_8b_rollout_sampler_holds_its_kv_cache_once():
  """The compiled 8b rollout sampler (the committed TPU compiles, 4 and 8 v5p chips) leaves no
  room for a second copy of any part of the KV cache: its peak minus the float32 parameters, the
  bf16 weights and the KV cache (the prompt once per group plus each row's own slots) is less
  than the prompt's KV bytes alone. The issue measured 88.5 GiB on 8 chips before the prompt
  was shared and the prefill's attention chunked, and the KV cache held twice at the handoff."""
  c = config_lib.load_config("configs/prometheus.py:size=8b")
  cfg = config_lib.preset_model(c)
  slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k and v, bf16
  g, n, p, r = c.rl.sample_prompts, c.rl.group_size, c.data.max_prompt_len, c.rl.max_response_len
  for rep in _reports("rl-"):
    if rep["model"] != "qwen3-8b":
      continue
    chips = rep["mesh"]["data"] * rep["mesh"]["fsdp"]
    peak = next(q["peak"] for q in rep["programs"] if q["name"] == "rollout_sampler")
    params = cfg.num_params() * (4 + 2) / chips  # float32 parameters + their bf16 copy
    prompt_kv = g * p * slot / chips
    kv = prompt_kv + g * n * r * slot / chips
    assert 0 < peak - params - kv < prompt_kv, (rep["topology"], peak / 2**30, kv / 2**30)
