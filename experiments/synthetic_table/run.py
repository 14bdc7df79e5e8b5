r"""A synthetic Table 2: every method from the shared synthetic base, several seeds, one command.

  python experiments/synthetic_table/run.py                 # all runs, then the table + plots
  python experiments/synthetic_table/run.py --aggregate     # only rebuild the table + plots
  python experiments/synthetic_table/run.py --seeds 0 --only warmup,real_b0_l1   # a subset

Every run is `python -m real_jax.main --config configs/synthetic.py:method=M` (the README's
default task, starting from assets/synthetic_base) with the overrides in `runs()`; its workdir is
<root>/<run>_s<seed>, so an interrupted study resumes where it stopped (finished runs are
skipped; a half-done run resumes from its last checkpoint). Two runs go at once, each pinned to
one CPU core. Per seed:

  base            the synthetic base, no training (method=eval)
  warmup          CE warm-up: SFT on the demonstrations (the RL runs start from it)
  raft, tract     regression-aware SFT from the base (RAFT: no CoT; TRACT: two stages)
  grpo            standard RL from the warm-up: binary reward, GRPO advantages, PPO ratio
  real_b{β}_l{λ}  REAL from the warm-up, β ∈ {0, 0.01, 1} (refinement weight), λ ∈ {0, 1}
                  (λ = 1: the authors' π(y*) shaping and −log π(y*) in the refinement; λ = 0:
                  neither)

Writes, next to this file: results.md (the tables), results.json (every number), curves.png
(training curves per method, mean over seeds), pred_vs_true.png (RAIL ŷ vs the target per
split, seed 0), and diagnostics in results.md (signal shares, exact-match rate).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPLITS = ("test", "test_ood_hard", "test_ood_rubric")
SPLIT_TITLES = {"test": "ID", "test_ood_hard": "OOD hard", "test_ood_rubric": "OOD rubric"}
BETAS = (0.0, 0.01, 1.0)
LAMS = (0, 1)


def _real_name(beta: float, lam: int) -> str:
  return f"real_b{beta:g}_l{lam}"


def runs() -> dict[str, dict]:
  """name -> {method, label, after (the run it starts from), args (config overrides)}."""
  from_warmup = ["--config.init.stage=sft", "--config.warmup.steps=0",
                 "--config.eval.after_warmup=false"]
  out = {
      "base": dict(method="eval", label="base (no training)", after=None, args=[]),
      "warmup": dict(method="sft", label="CE warm-up (SFT)", after=None, args=[]),
      "raft": dict(method="raft", label="RAFT", after=None, args=[]),
      "tract": dict(method="tract", label="TRACT (two stages)", after=None, args=[]),
      "grpo": dict(method="grpo", label="standard RL (GRPO)", after="warmup", args=from_warmup),
  }
  for beta in BETAS:
    for lam in LAMS:
      extra = [] if lam else ["--config.rl.lam=0", "--config.rl.shaping=none"]
      out[_real_name(beta, lam)] = dict(
          method="real", label=f"REAL β={beta:g} λ={lam}", after="warmup",
          args=from_warmup + [f"--config.rl.beta={beta:g}"] + extra)
  return out


def workdir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f"{name}_s{seed}")


def finished(wd: str) -> bool:
  p = os.path.join(wd, "results.json")
  if not os.path.exists(p):
    return False
  with open(p) as f:
    rows = json.load(f).get("rows", [])
  return any(r.get("name") not in ("warm-up (SFT)", "initial model") for r in rows)


def command(root: str, name: str, seed: int, config_arg: str = "",
            extra: tuple[str, ...] = ()) -> list[str]:
  r = runs()[name]
  arg = f"method={r['method']}" + (f",{config_arg}" if config_arg else "")
  cmd = [sys.executable, "-m", "real_jax.main",
         f"--config={os.path.join(ROOT, 'configs', 'synthetic.py')}:{arg}",
         f"--workdir={workdir(root, name, seed)}", f"--config.seed={seed}",
         f"--config.name={r['label']}", "--config.eval.before_training=false"]
  if r["after"]:
    cmd.append(f"--config.init.checkpoint={workdir(root, r['after'], seed)}")
  return cmd + r["args"] + list(extra)


def run_all(root: str, names: list[str], seeds: list[int], jobs: int, config_arg: str = "",
            extra: tuple[str, ...] = ()) -> float:
  """Runs what is not finished yet, `jobs` at a time (each on its own core); returns seconds."""
  deps = runs()
  # Warm-ups first (the RL runs wait on them), then the longest independent runs.
  rank = {"warmup": 0, "tract": 1}
  order = sorted(((n, s) for s in seeds for n in names),
                 key=lambda it: (rank.get(it[0], 2 if deps[it[0]]["after"] else 3), it[1]))
  todo = [it for it in order if not finished(workdir(root, *it))]
  done: set = {it for it in order if it not in todo}
  t0 = time.time()
  print(f"[study] {len(todo)} runs to do ({len(done)} already finished), {jobs} at a time",
        flush=True)
  free_cores = list(range(jobs))
  n_done = 0

  def one(item, core):
    n, s = item
    wd = workdir(root, n, s)
    os.makedirs(wd, exist_ok=True)
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
               "intra_op_parallelism_threads=1", TF_CPP_MIN_LOG_LEVEL="2")
    t = time.time()
    with open(os.path.join(wd, "log.txt"), "a") as log:
      pin = ["taskset", "-c", str(core)] if shutil.which("taskset") and jobs > 1 else []
      rc = subprocess.call(pin + command(root, n, s, config_arg, extra),
                           stdout=log,
                           stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return item, rc, time.time() - t

  pending = list(todo)
  with ThreadPoolExecutor(jobs) as ex:
    running = {}
    while pending or running:
      ready = [it for it in pending
               if deps[it[0]]["after"] is None or (deps[it[0]]["after"], it[1]) in done]
      while ready and free_cores:
        it = ready.pop(0)
        pending.remove(it)
        core = free_cores.pop(0)
        running[ex.submit(one, it, core)] = core
      if not running:
        raise RuntimeError(f"runs wait on runs that are not part of this invocation: {pending}")
      fut = next(iter(_wait_first(running)))
      core = running.pop(fut)
      free_cores.append(core)
      (n, s), rc, dt = fut.result()
      if rc != 0:
        raise RuntimeError(f"run {n} seed {s} failed (exit {rc}); see "
                           f"{os.path.join(workdir(root, n, s), 'log.txt')}")
      done.add((n, s))
      n_done += 1
      el = time.time() - t0
      eta = el / n_done * (len(todo) - n_done)
      print(f"[study] {n_done}/{len(todo)} done: {n} seed {s} in {dt:.0f}s | elapsed "
            f"{el / 60:.1f} min, {n_done / el * 3600:.1f} runs/h, ETA {eta / 60:.1f} min",
            flush=True)
  return time.time() - t0


def _wait_first(futures):
  from concurrent.futures import FIRST_COMPLETED, wait
  return wait(list(futures), return_when=FIRST_COMPLETED)[0]


# ---------------------------------------------------------------------------------------------
# Aggregation


def _final_tag(wd: str) -> str:
  return "eval" if os.path.exists(os.path.join(wd, "eval", "eval.json")) else "final"


def load_predictions(wd: str) -> dict[str, dict[str, np.ndarray]]:
  """split -> {index, target, rail, standard, valid} of a run's final evaluation."""
  cols: dict[str, dict[str, list]] = {}
  with open(os.path.join(wd, "eval", f"{_final_tag(wd)}_predictions.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      c = cols.setdefault(r["split"], {k: [] for k in ("index", "target", "rail", "standard",
                                                         "valid")})
      for k in c:
        c[k].append(r[k] if r[k] is not None else np.nan)
  return {sp: {k: np.asarray(v, np.float64) for k, v in c.items()} for sp, c in cols.items()}


def eval_records(wd: str) -> dict[str, list[dict]]:
  """split -> the evaluation records of a run (as its evaluation read them)."""
  from ml_collections import ConfigDict
  from real_jax.train import data_utils
  with open(os.path.join(wd, "run.json")) as f:
    config = ConfigDict(json.load(f)["config"])
  _, evals, _ = data_utils.load_sources(config, wd, train=False, evaluation=True)
  return {sp: [src[i] for i in range(len(src))] for sp, src in evals.items()}


def cot_is_right(record: dict, cot: str) -> bool:
  """Whether a sampled CoT walks through the record's 4 items correctly: the right items in
  order, their true sums, the response's answers, and the right verdict for each."""
  text = cot.replace(" ", "")
  items = re.findall(r"\b[a-d]\) (\d+(?:\+\d+)+)", record["instruction"])
  answers = re.findall(r"\b[a-d]\) (\d+)", record["response"])
  steps = re.findall(r"(\d+(?:\+\d+)+)=(\d+)vs(\d+)(right|close|wrong)\.", text)
  if len(steps) != len(items) or len(items) != 4:
    return False
  for (expr, shown, ans, verdict), item, a in zip(steps, items, answers):
    total = sum(map(int, item.split("+")))
    d = abs(total - int(a))
    if expr != item or int(shown) != total or ans != a or verdict != (
        "right" if d == 0 else "close" if d == 1 else "wrong"):
      return False
  return True


def cot_accuracy(wd: str, records: dict[str, list[dict]]) -> dict[str, float]:
  """split -> share of the final evaluation's CoTs that are entirely right (cot_is_right)."""
  out: dict[str, list[bool]] = {}
  with open(os.path.join(wd, "eval", f"{_final_tag(wd)}_predictions.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "cot" in r:
        out.setdefault(r["split"], []).append(cot_is_right(records[r["split"]][r["index"]],
                                                           r["cot"]))
  return {sp: float(np.mean(v)) for sp, v in out.items()}


def _pearson_rows(p: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Pearson of each row of p [R, N] with the matching row of t [R, N]."""
  p = p - p.mean(-1, keepdims=True)
  t = t - t.mean(-1, keepdims=True)
  den = np.sqrt((p * p).sum(-1) * (t * t).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (p * t).sum(-1) / den, np.nan)


def metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  from real_jax.evaluate import correlations
  return correlations(pred, target)


def bootstrap_ci(preds: list[np.ndarray], target: np.ndarray, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
  """95% percentile intervals over items of the seed-mean Pearson and MSE: items are resampled
  (the same resample for every seed), each seed's metric computed, then averaged over seeds."""
  rng = np.random.default_rng(seed)
  n = len(target)
  idx = rng.integers(0, n, size=(n_boot, n))
  t = target[idx]
  pear = np.nanmean(np.stack([_pearson_rows(p[idx], t) for p in preds]), 0)
  mse = np.mean(np.stack([((p[idx] - t) ** 2).mean(-1) for p in preds]), 0)
  q = lambda x: (float(np.nanpercentile(x, 2.5)), float(np.nanpercentile(x, 97.5)))
  return {"pearson": q(pear), "mse": q(mse)}


def aggregate(root: str, names: list[str], seeds: list[int]) -> dict:
  spec = runs()
  out: dict = {"seeds": seeds, "methods": {}, "ceiling": {}}
  ref_items = records = None
  for name in names:
    per_seed = []
    for s in seeds:
      wd = workdir(root, name, s)
      if finished(wd):
        per_seed.append((s, load_predictions(wd)))
    if not per_seed:
      continue
    m: dict = {"label": spec[name]["label"], "seeds": [s for s, _ in per_seed], "splits": {}}
    for sp in SPLITS:
      entry = {}
      for readout in ("rail", "standard"):
        vals = [metrics(p[sp][readout], p[sp]["target"]) for _, p in per_seed]
        entry[readout] = {k: {"mean": float(np.nanmean([v[k] for v in vals])),
                              "std": float(np.nanstd([v[k] for v in vals], ddof=1))
                              if len(vals) > 1 else float("nan"),
                              "per_seed": [v[k] for v in vals]}
                          for k in ("pearson", "spearman", "kendall", "mse")}
        entry[readout]["ci"] = bootstrap_ci([p[sp][readout] for _, p in per_seed],
                                            per_seed[0][1][sp]["target"])
      entry["invalid_frac"] = float(np.mean([1 - p[sp]["valid"].mean() for _, p in per_seed]))
      entry["n"] = int(len(per_seed[0][1][sp]["target"]))
      m["splits"][sp] = entry
    if spec[name]["method"] in ("grpo", "real"):
      m["diagnostics"] = rl_diagnostics([workdir(root, name, s) for s in m["seeds"]])
    if records is None:
      ref_items = (workdir(root, name, per_seed[0][0]), per_seed[0][1])
      records = eval_records(ref_items[0])
    accs = [cot_accuracy(workdir(root, name, s), records) for s in m["seeds"]]
    if all(accs):
      m["cot_right"] = {sp: float(np.mean([a[sp] for a in accs])) for sp in SPLITS}
    out["methods"][name] = m
  if ref_items is not None:
    _, preds = ref_items
    for sp in SPLITS:
      idx = preds[sp]["index"].astype(int)
      bayes = np.asarray([float(records[sp][i]["expected_score"]) for i in idx])
      target = preds[sp]["target"]
      out["ceiling"][sp] = {**metrics(bayes, target), "ci": bootstrap_ci([bayes], target),
                            "n": int(len(idx))}
  return out


DIAGNOSTICS = ("binary_acc", "signal_binary", "signal_regression", "reward_mean",
               "abs_err_rollout", "y_hat_std", "score_mass")


def rl_diagnostics(wds: list[str]) -> dict[str, dict[str, float]]:
  """Rollout statistics of the first and the last update, mean over seeds: the exact-match rate
  of the sampled score (binary_acc; at the first update, the warm-up's), the share of groups
  whose rewards differ under the binary and the regression reward, the mean reward, |ŷ − y|,
  the spread of ŷ and the probability mass on the score tokens."""
  first, last = [], []
  for wd in wds:
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      rl = [r for r in map(json.loads, f) if r.get("stage") == "rl"]
    first.append(rl[0])
    last.append(rl[-1])
  return {k: {"first": float(np.mean([r[k] for r in first])),
              "last": float(np.mean([r[k] for r in last]))} for k in DIAGNOSTICS
          if all(k in r for r in first + last)}


def _cell(m: dict, metric: str, scale: float, digits: int) -> str:
  mean, std = m[metric]["mean"] * scale, m[metric]["std"] * scale
  if not np.isfinite(mean):
    return "–"
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


def render(agg: dict, *, wall_s: float | None, machine: str) -> str:
  names = list(agg["methods"])
  lines = ["# Synthetic Table 2: every method from the shared synthetic base", "",
           f"Seeds: {agg['seeds']}. Mean ± std over seeds (sample std); [95% bootstrap interval "
           "over items of the seed-mean]. Pearson, Spearman and Kendall × 100; MSE of the "
           "prediction against the target (mean of 3 graders).", ""]
  for readout, title in (("rail", "RAIL readout (ŷ = Σ k·p(k))"),
                         ("standard", "standard readout (the sampled score digit)")):
    for metric, scale, digits in (("pearson", 100, 1), ("spearman", 100, 1), ("kendall", 100, 1),
                                  ("mse", 1, 3)):
      lines += [f"### {metric.capitalize() if metric != 'mse' else 'MSE'}, {title}", ""]
      head = ["Method"] + [SPLIT_TITLES[s] for s in SPLITS] + ["Avg"]
      lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
      for n in names:
        m = agg["methods"][n]
        cells = []
        for sp in SPLITS:
          e = m["splits"][sp][readout]
          c = _cell(e, metric, scale, digits)
          if metric in ("pearson", "mse") and readout == "rail":
            lo, hi = e["ci"][metric]
            c += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
          cells.append(c)
        avg = np.nanmean([m["splits"][sp][readout][metric]["mean"] for sp in SPLITS]) * scale
        lines.append("| " + " | ".join([m["label"]] + cells + [f"{avg:.{digits}f}"]) + " |")
      if readout == "rail" and agg["ceiling"]:
        cells = []
        for sp in SPLITS:
          c = agg["ceiling"][sp]
          v = f"{c[metric] * scale:.{digits}f}"
          if metric in ("pearson", "mse"):
            lo, hi = c["ci"][metric]
            v += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
          cells.append(v)
        avg = np.mean([agg["ceiling"][sp][metric] for sp in SPLITS]) * scale
        lines.append("| *Bayes ceiling: E[y\\* given x]* | " + " | ".join(cells) +
                     f" | {avg:.{digits}f} |")
      lines.append("")
  lines += ["### Outputs without a valid score (mean over seeds)", "",
            "| Method | " + " | ".join(SPLIT_TITLES[s] for s in SPLITS) + " |",
            "|---|" + "---:|" * len(SPLITS)]
  for n in names:
    m = agg["methods"][n]
    lines.append(f"| {m['label']} | " + " | ".join(
        f"{100 * m['splits'][sp]['invalid_frac']:.1f}%" for sp in SPLITS) + " |")
  lines.append("")
  cot = [n for n in names if "cot_right" in agg["methods"][n]]
  if cot:
    lines += ["### CoTs that are entirely right (every item, sum, answer and verdict; mean "
              "over seeds)", "", "| Method | " + " | ".join(SPLIT_TITLES[s] for s in SPLITS) +
              " |", "|---|" + "---:|" * len(SPLITS)]
    for n in cot:
      lines.append(f"| {agg['methods'][n]['label']} | " + " | ".join(
          f"{100 * agg['methods'][n]['cot_right'][sp]:.1f}%" for sp in SPLITS) + " |")
    lines.append("")
  rl = [n for n in names if "diagnostics" in agg["methods"][n]]
  if rl:
    keys = [k for k in DIAGNOSTICS if k in agg["methods"][rl[0]]["diagnostics"]]
    lines += ["### RL diagnostics: rollouts at the first → last update (mean over seeds)", "",
              "| Method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for n in rl:
      d = agg["methods"][n]["diagnostics"]
      lines.append(f"| {agg['methods'][n]['label']} | " + " | ".join(
          f"{d[k]['first']:.3f} → {d[k]['last']:.3f}" for k in keys) + " |")
    lines.append("")
  items = ", ".join(f"{SPLIT_TITLES[s]} {agg['ceiling'][s]['n']}" for s in SPLITS
                    if s in agg["ceiling"])
  lines += [f"Items per split: {items}. Machine: {machine}."]
  if wall_s is not None:
    lines += [f"Wall time of the invocation that ran the runs: {wall_s / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def _curve_key(name: str) -> tuple[str, str]:
  method = runs()[name]["method"]
  if method in ("grpo", "real"):
    return "rl", "reward_mean"
  if method == "tract":
    return "tract2", "loss"
  return {"sft": "sft", "raft": "raft"}.get(method, ""), "loss"


def plot(root: str, agg: dict, out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in agg["methods"] if n != "base"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for n in names:
    stage, key = _curve_key(n)
    curves = []
    for s in agg["methods"][n]["seeds"]:
      path = os.path.join(workdir(root, n, s), "metrics.jsonl")
      pts = []
      with open(path) as f:
        for line in f:
          r = json.loads(line)
          if r.get("stage") == stage and key in r:
            pts.append((r["step"], r[key]))
      curves.append(pts)
    steps = [p[0] for p in curves[0]]
    ys = np.array([[p[1] for p in c[:len(steps)]] for c in curves if len(c) >= len(steps)])
    ax = axes[1] if stage == "rl" else axes[0]
    label = agg["methods"][n]["label"] + (" (stage 2)" if stage == "tract2" else "")
    ax.plot(steps, ys.mean(0), label=label)
  axes[0].set(title="supervised runs: training loss (mean over seeds)", xlabel="step",
              ylabel="loss", yscale="log")
  axes[1].set(title="RL runs: mean rollout reward (mean over seeds)", xlabel="update",
              ylabel="reward (its own: binary for GRPO, −(ŷ−y)² for REAL)")
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  curves_png = os.path.join(out_dir, "curves.png")
  fig.savefig(curves_png, dpi=110)
  plt.close(fig)

  names = list(agg["methods"])
  fig, axes = plt.subplots(len(names), len(SPLITS), figsize=(9, 2.1 * len(names)),
                           sharex=True, sharey=True, squeeze=False)
  for i, n in enumerate(names):
    p = load_predictions(workdir(root, n, agg["methods"][n]["seeds"][0]))
    for j, sp in enumerate(SPLITS):
      ax = axes[i, j]
      d = p[sp]
      jitter = np.random.default_rng(j).uniform(-0.06, 0.06, len(d["target"]))
      ax.scatter(d["target"] + jitter, d["rail"], s=4, alpha=0.5)
      ax.plot([1, 5], [1, 5], c="k", lw=0.6)
      r = agg["methods"][n]["splits"][sp]["rail"]["pearson"]["per_seed"][0]
      ax.set_title(f"{agg['methods'][n]['label']} · {SPLIT_TITLES[sp]} · r={r:.2f}", fontsize=7)
      if j == 0:
        ax.set_ylabel("RAIL ŷ", fontsize=7)
      if i == len(names) - 1:
        ax.set_xlabel("target (mean of 3 graders)", fontsize=7)
  fig.tight_layout()
  scatter_png = os.path.join(out_dir, "pred_vs_true.png")
  fig.savefig(scatter_png, dpi=100)
  plt.close(fig)
  return [curves_png, scatter_png]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default=os.path.join(ROOT, "workdirs", "synthetic_table"))
  p.add_argument("--out", default=HERE, help="where results.md / results.json / PNGs go")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--only", default="", help="comma-separated run names (default: all)")
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--aggregate", action="store_true", help="skip the runs; rebuild the outputs")
  p.add_argument("--config_arg", default="", help="appended to the config argument, e.g. runlocal")
  p.add_argument("--extra", action="append", default=[],
                 help="a config override passed to every run (repeatable), e.g. "
                      "--extra=--config.eval.max_items=64")
  a = p.parse_args(argv)
  seeds = [int(s) for s in a.seeds.split(",")]
  names = a.only.split(",") if a.only else list(runs())
  unknown = [n for n in names if n not in runs()]
  if unknown:
    print(f"unknown run names {unknown}; known: {list(runs())}", file=sys.stderr)
    return 2
  wall = None if a.aggregate else run_all(a.root, names, seeds, a.jobs, a.config_arg,
                                          tuple(a.extra))
  previous = os.path.join(a.out, "results.json")
  if wall is None and os.path.exists(previous):  # --aggregate keeps the runs' wall time
    with open(previous) as f:
      wall = json.load(f).get("wall_s")
  agg = aggregate(a.root, names, seeds)
  os.makedirs(a.out, exist_ok=True)
  machine = f"{os.cpu_count()} CPU cores, {a.jobs} runs at a time (one core each)"
  with open(os.path.join(a.out, "results.md"), "w") as f:
    f.write(render(agg, wall_s=wall, machine=machine))
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({**agg, "wall_s": wall, "machine": machine}, f, indent=1)
  pngs = plot(a.root, agg, a.out)
  print(open(os.path.join(a.out, "results.md")).read())
  print("wrote", os.path.join(a.out, "results.md"), *pngs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
