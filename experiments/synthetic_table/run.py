r"""A synthetic Table 2: every method from the shared synthetic base, 5 seeds, paired intervals.

  python experiments/synthetic_table/sweep.py               # first: chosen.json (validation)
  python experiments/synthetic_table/run.py --gate          # the precondition (warm-up, seed 0)
  python experiments/synthetic_table/run.py                 # the study, then every output
  python experiments/synthetic_table/run.py --aggregate     # only rebuild the outputs

Every run is `python -m real_jax.main --config configs/synthetic.py:method=M` (the README's
default task, starting from assets/synthetic_base) with the settings of `chosen.json` — the
sweep's choice on the in-domain validation split; this script reads settings from nowhere
else and refuses a chosen.json entry whose split is not "validation". Workdirs are
<root>/<run>_s<seed> (outside the work tree): an interrupted study resumes where it stopped.
Two runs go at once, each pinned to one CPU core. Per seed (default 0-4):

  base         the synthetic base, no training (method=eval)
  warmup       CE warm-up: SFT on the demonstrations (the RL runs start from it)
  raft, tract  regression-aware SFT from the base (RAFT: no CoT; TRACT: two stages)
  grpo, real   standard RL (binary reward, GRPO advantages, PPO ratio) and REAL from the warm-up
  grpo_tract, real_tract   the same two from TRACT (the paper's initialisation)

and the ablation (default seeds 0, 1): REAL's β × λ grid at its chosen LR and budget.

Outputs, next to this file: results.md (tables: Pearson / Spearman / Kendall / MSE, RAIL and
standard readouts, intervals over seeds and items; the paired differences REAL − GRPO,
REAL − warm-up, REAL − TRACT; the precondition; rollout signal per split under the warm-up;
CoT correctness; RL diagnostics incl. entropy), results.json (every number), curves.png
(training curves and, per update, the share of groups with signal and the policy entropy) and
pred_vs_true.png (RAIL ŷ against the target per split, seed 0).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

from real_jax import bootstrap, evaluate
from real_jax.train import config_lib, data_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs as jobs_lib  # noqa: E402  (this directory's shared runner)

SPLITS, SPLIT_TITLES = jobs_lib.SPLITS, jobs_lib.SPLIT_TITLES
CHOSEN = os.path.join(jobs_lib.HERE, "chosen.json")
METHODS_CHOSEN = ("warmup", "raft", "tract", "grpo", "real")
MAIN = ("base", "warmup", "raft", "tract", "grpo", "real", "grpo_tract", "real_tract")
BETAS, LAMS = (0.0, 0.01, 1.0), (0, 1)
PAIRS = (("real", "grpo"), ("real", "warmup"), ("real", "tract"), ("real_tract", "grpo_tract"),
         ("real_tract", "tract"))
# The precondition: the warm-up's share of entirely-right CoTs on each OOD split.
GATE = (0.20, 0.70)
N_BOOT = 1000


class ChosenError(ValueError):
  """chosen.json is missing, incomplete, or names a split other than validation."""


def load_chosen(path: str) -> dict:
  if not os.path.exists(path):
    raise ChosenError(f"{path} does not exist; run experiments/synthetic_table/sweep.py first")
  try:
    with open(path) as f:
      chosen = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ChosenError(f"{path}: {e}") from None
  missing = [m for m in METHODS_CHOSEN if not isinstance(chosen.get(m), dict)
             or not isinstance(chosen[m].get("settings"), dict)]
  if missing:
    raise ChosenError(f"{path} has no settings for {missing}; rerun sweep.py")
  bad = {m: c.get("split") for m, c in chosen.items() if c.get("split") != "validation"}
  if bad:
    raise ChosenError(f"{path}: settings of {sorted(bad)} were chosen on {sorted(set(bad.values()))},"
                      " not on the validation split; choose them with sweep.py")
  if not {"rl.lr", "rl.steps"} <= set(chosen["real"]["settings"]):
    raise ChosenError(f"{path}: REAL's settings need rl.lr and rl.steps; rerun sweep.py")
  return chosen


def real_name(beta: float, lam: int) -> str:
  return f"real_b{beta:g}_l{lam}"


def study_jobs(chosen: dict) -> dict[str, jobs_lib.Job]:
  """name -> Job of every study run, settings from `chosen`."""
  J = jobs_lib.Job
  a = {m: jobs_lib.settings_args(chosen[m]["settings"]) for m in METHODS_CHOSEN}
  out = {
      "base": J("base", "eval", "base (no training)"),
      "warmup": jobs_lib.warmup_job(chosen["warmup"]["settings"]),
      "raft": J("raft", "raft", "RAFT", a["raft"]),
      "tract": J("tract", "tract", "TRACT (two stages)", a["tract"]),
      "grpo": J("grpo", "grpo", "standard RL (GRPO)", a["grpo"], after="warmup"),
      "real": J("real", "real", "REAL", a["real"], after="warmup"),
      "grpo_tract": J("grpo_tract", "grpo", "standard RL from TRACT", a["grpo"], after="tract"),
      "real_tract": J("real_tract", "real", "REAL from TRACT", a["real"], after="tract"),
  }
  rs = chosen["real"]["settings"]
  for beta in BETAS:
    for lam in LAMS:
      s = {**rs, **jobs_lib.real_settings(rs["rl.lr"], rs["rl.steps"], beta, lam)}
      if s != rs:
        out[real_name(beta, lam)] = J(real_name(beta, lam), "real", f"REAL β={beta:g} λ={lam}",
                                      jobs_lib.settings_args(s), after="warmup")
  return out


# The chosen β × λ in the ablation: the study's own `real` runs, read over the ablation's seeds
# only, so that every row of the ablation's tables averages the same seeds.
ABLATION_REAL = "real@ablation"


def run_of(name: str) -> str:
  """The run (job) a table row reads: `real@ablation` reads `real`."""
  return name.split("@")[0]


def ablation_names(jobs: dict[str, jobs_lib.Job]) -> list[str]:
  """The β × λ grid's rows; the chosen combination reads the study's own `real` runs."""
  return [real_name(b, l) if real_name(b, l) in jobs else ABLATION_REAL
          for b in BETAS for l in LAMS]


# ---------------------------------------------------------------------------------------------
# What the runs produced


def eval_records(wd: str) -> dict[str, list[dict]]:
  """split -> the evaluation records of a run (as its evaluation read them)."""
  with open(os.path.join(wd, "run.json")) as f:
    config = config_lib.with_defaults(json.load(f)["config"])
  _, evals, _ = data_utils.load_sources(config, wd, train=False, evaluation=True)
  return {sp: [src[i] for i in range(len(src))] for sp, src in evals.items()}


STEP_PARTS = ("item", "sum", "answer", "verdict")


def cot_steps(record: dict, cot: str) -> list[dict[str, bool]]:
  """Per labelled step of a CoT ("a) 4+8=12 vs 13 close."): whether it copied the item with that
  label, added it right, copied that item's answer, and gave the verdict its sum and answer
  call for (right / close within 1 / wrong)."""
  items = dict(re.findall(r"\b([a-d])\) (\d+(?:\+\d+)+)", record["instruction"]))
  answers = dict(re.findall(r"\b([a-d])\) (\d+)", record["response"]))
  out = []
  for label, expr, shown, ans, verdict in re.findall(
      r"([a-d])\)(\d+(?:\+\d+)+)=(\d+)vs(\d+)(right|close|wrong)\.", cot.replace(" ", "")):
    d = abs(int(shown) - int(ans))
    out.append({"label": label, "item": expr == items.get(label),
                "sum": int(shown) == sum(map(int, expr.split("+"))),
                "answer": ans == answers.get(label),
                "verdict": verdict == ("right" if d == 0 else "close" if d == 1 else "wrong")})
  return out


def cot_is_right(record: dict, cot: str) -> bool:
  """Whether a sampled CoT walks through the record's 4 items correctly: steps a, b, c, d in
  order, each with the item and the answer of its label, the item's true sum and the verdict
  they call for (`cot_steps`)."""
  steps = cot_steps(record, cot)
  return (len(steps) == 4 and [s["label"] for s in steps] == list("abcd")
          and all(s[k] for s in steps for k in STEP_PARTS))


def cot_accuracy(wd: str, records: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
  """split -> {"all": the share of the final evaluation's CoTs that are entirely right
  (`cot_is_right`), and per step part (`cot_steps`): the share of the 4 steps a CoT should
  have that it wrote with that part right}."""
  out: dict[str, dict[str, list]] = {}
  with open(os.path.join(wd, "eval", f"{jobs_lib.final_tag(wd)}_predictions.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "cot" in r:
        rec = records[r["split"]][r["index"]]
        o = out.setdefault(r["split"], {"all": [], **{k: [] for k in STEP_PARTS}})
        o["all"].append(cot_is_right(rec, r["cot"]))
        steps = cot_steps(rec, r["cot"])
        for k in STEP_PARTS:
          o[k].append(sum(st[k] for st in steps[:4]) / 4)  # a missing step counts as wrong
  return {sp: {k: float(np.mean(v)) for k, v in o.items()} for sp, o in out.items()}


DIAGNOSTICS = ("binary_acc", "signal_binary", "signal_regression", "entropy", "reward_mean",
               "abs_err_rollout", "y_hat_std", "score_mass")


def rl_rows(wd: str) -> list[dict]:
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r.get("stage") == "rl"]


def rl_diagnostics(wds: list[str]) -> dict[str, dict[str, float]]:
  """Rollout statistics of the first and the last update, mean over seeds: the exact-match rate
  of the sampled score (binary_acc), the share of groups whose rewards differ under the binary
  and the regression reward, the policy entropy per CoT token, the mean reward, |ŷ − y|, the
  spread of ŷ and the probability mass on the score tokens."""
  first, last = [], []
  for wd in wds:
    rl = rl_rows(wd)
    first.append(rl[0])
    last.append(rl[-1])
  return {k: {"first": float(np.mean([r[k] for r in first])),
              "last": float(np.mean([r[k] for r in last]))} for k in DIAGNOSTICS
          if all(k in r for r in first + last)}


def seed_matrix(per_seed: list[dict], split: str, key: str) -> np.ndarray:
  """[S, N] of one split's column over seeds, items ordered by index (the same in every seed)."""
  rows = []
  for p in per_seed:
    o = np.argsort(p[split]["index"], kind="stable")
    rows.append(p[split][key][o])
  return np.stack(rows)


def aggregate(root: str, jobs: dict, names: list[str], seeds_of: dict[str, list[int]]) -> dict:
  out: dict = {"methods": {}, "ceiling": {}, "pairs": {}}
  records = None
  preds_of: dict[str, list[dict]] = {}
  for name in names:
    run = run_of(name)
    per_seed, seeds = [], []
    for s in seeds_of[name]:
      wd = jobs_lib.workdir(root, run, s)
      if jobs_lib.finished(jobs[run], wd):
        per_seed.append(jobs_lib.load_predictions(wd))
        seeds.append(s)
    if not per_seed:
      continue
    preds_of[name] = per_seed
    label = jobs[run].label + (f" (seeds {', '.join(map(str, seeds))})" if run != name else "")
    m: dict = {"label": label, "seeds": seeds, "splits": {}}
    for sp in SPLITS:
      target = seed_matrix(per_seed, sp, "target")
      entry = {}
      for readout in ("rail", "standard"):
        pred = seed_matrix(per_seed, sp, readout)
        entry[readout] = {}
        for k in bootstrap.METRICS:
          vals = bootstrap.metric_rows(k, pred, target)
          iv = bootstrap.interval(k, pred, target, n_boot=N_BOOT)
          entry[readout][k] = {"mean": float(np.nanmean(vals)),
                               "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1
                               else float("nan"),
                               "per_seed": [float(v) for v in vals], "ci": [iv.low, iv.high]}
      entry["invalid_frac"] = float(1 - seed_matrix(per_seed, sp, "valid").mean())
      entry["n"] = int(target.shape[1])
      m["splits"][sp] = entry
    if jobs[run].method in ("grpo", "real"):
      m["diagnostics"] = rl_diagnostics([jobs_lib.workdir(root, run, s) for s in seeds])
    if records is None:
      records = eval_records(jobs_lib.workdir(root, run, seeds[0]))
    accs = [cot_accuracy(jobs_lib.workdir(root, run, s), records) for s in seeds]
    if all(accs):
      m["cot_right"] = {sp: float(np.mean([a[sp]["all"] for a in accs])) for sp in SPLITS}
      m["cot_right_per_seed"] = {sp: [float(a[sp]["all"]) for a in accs] for sp in SPLITS}
      m["cot_steps_per_seed"] = {sp: {k: [float(a[sp][k]) for a in accs] for k in STEP_PARTS}
                                 for sp in SPLITS}
      m["cot_steps"] = {sp: {k: float(np.mean([a[sp][k] for a in accs])) for k in STEP_PARTS}
                        for sp in SPLITS}
    out["methods"][name] = m
  for a, b in PAIRS:
    if a not in preds_of or b not in preds_of:
      continue
    common = sorted(set(out["methods"][a]["seeds"]) & set(out["methods"][b]["seeds"]))
    pa = [p for s, p in zip(out["methods"][a]["seeds"], preds_of[a]) if s in common]
    pb = [p for s, p in zip(out["methods"][b]["seeds"], preds_of[b]) if s in common]
    pair = {"seeds": common, "splits": {}}
    for sp in SPLITS:
      target = seed_matrix(pa, sp, "target")
      same = [np.array_equal(np.sort(x[sp]["index"]), np.sort(y[sp]["index"]))
              for x, y in zip(pa, pb)]
      if not all(same) or not np.allclose(target, seed_matrix(pb, sp, "target")):
        raise ValueError(f"{a} and {b} were evaluated on different items of {sp}; rerun them "
                         "with the same data and eval.max_items")
      pair["splits"][sp] = {
          ro: {k: bootstrap.paired_difference(k, seed_matrix(pa, sp, ro), seed_matrix(pb, sp, ro),
                                              target, n_boot=N_BOOT)._asdict()
               for k in bootstrap.METRICS} for ro in ("rail", "standard")}
    out["pairs"][f"{a}-{b}"] = pair
  if records is not None:
    first = next(iter(preds_of.values()))[0]
    for sp in SPLITS:
      idx = np.sort(first[sp]["index"].astype(int))
      bayes = np.asarray([float(records[sp][i]["expected_score"]) for i in idx])
      target = seed_matrix([first], sp, "target")[0]
      iv = {k: bootstrap.interval(k, bayes, target, n_boot=N_BOOT) for k in ("pearson", "mse")}
      out["ceiling"][sp] = {**evaluate.correlations(bayes, target), "n": int(len(idx)),
                            "ci": {k: [v.low, v.high] for k, v in iv.items()}}
  return out


def gate(agg: dict) -> dict:
  """The precondition, read from the warm-up's CoT correctness: each OOD split's share of
  entirely-right CoTs within GATE and below the in-domain share."""
  w = agg["methods"].get("warmup", {}).get("cot_right")
  if not w:
    return {}
  ood = {sp: w[sp] for sp in SPLITS[1:]}
  met = all(GATE[0] <= v <= GATE[1] and v < w["test"] for v in ood.values())
  per_seed = agg["methods"]["warmup"].get("cot_right_per_seed", {})
  return {"in_domain": w["test"], "ood": ood, "range": list(GATE), "met": bool(met),
          "per_seed": per_seed}


def gate_line(g: dict) -> str:
  if not g:
    return "Precondition: not measured (no finished warm-up run)."
  parts = ", ".join(f"{SPLIT_TITLES[sp]} {100 * v:.1f}%" for sp, v in g["ood"].items())
  verdict = "MET" if g["met"] else "NOT MET"
  return (f"Precondition ({verdict}): the warm-up's entirely-right CoTs: ID "
          f"{100 * g['in_domain']:.1f}%, {parts} (aim: each OOD split in "
          f"{100 * g['range'][0]:.0f}–{100 * g['range'][1]:.0f}% and below ID)." + (
              " Per seed: " + "; ".join(
                  f"{SPLIT_TITLES[sp]} " + " / ".join(f"{100 * v:.0f}%" for v in vals)
                  for sp, vals in g["per_seed"].items()) + "." if g.get("per_seed") else ""))


def rollout_signal(root: str, name: str, seed: int, config_arg: str) -> dict | None:
  """The rollout signal per split of a finished run (`real_jax.tools.rollout_signal`, run once
  and kept in its workdir)."""
  wd = jobs_lib.workdir(root, name, seed)
  path = os.path.join(wd, "rollout_signal", "rollout_signal.json")
  if not os.path.exists(path):
    if not os.path.exists(os.path.join(wd, "run.json")):
      return None
    prompts = "8" if "runlocal" in config_arg else "64"  # groups at the run's rl.group_size
    env = jobs_lib.single_core_env()
    with open(os.path.join(wd, "rollout_signal.log"), "w") as log:
      rc = subprocess.call([sys.executable, "-m", "real_jax.tools.rollout_signal",
                            f"--workdir={wd}", f"--prompts={prompts}", "--method=real"],
                           stdout=log, stderr=subprocess.STDOUT, cwd=jobs_lib.ROOT, env=env)
    if rc != 0:
      raise jobs_lib.JobError(f"rollout_signal of {wd} failed (exit {rc}); see its "
                              "rollout_signal.log")
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Tables and plots


def _cell(m: dict, scale: float, digits: int) -> str:
  mean, std = m["mean"] * scale, m["std"] * scale
  if not np.isfinite(mean):
    return "–"
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


def _metric_table(agg: dict, names: list[str], readout: str, metric: str, scale: float,
                  digits: int, ceiling: bool) -> list[str]:
  head = ["Method"] + [SPLIT_TITLES[s] for s in SPLITS] + ["Avg"]
  lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for n in names:
    m = agg["methods"][n]
    cells = []
    for sp in SPLITS:
      e = m["splits"][sp][readout][metric]
      c = _cell(e, scale, digits)
      if c != "–":
        c += f" [{e['ci'][0] * scale:.{digits}f}, {e['ci'][1] * scale:.{digits}f}]"
      cells.append(c)
    avg = np.nanmean([m["splits"][sp][readout][metric]["mean"] for sp in SPLITS]) * scale
    lines.append("| " + " | ".join([m["label"]] + cells + [f"{avg:.{digits}f}"]) + " |")
  if ceiling and agg["ceiling"] and metric in ("pearson", "spearman", "kendall", "mse"):
    cells = []
    for sp in SPLITS:
      c = agg["ceiling"][sp]
      v = f"{c[metric] * scale:.{digits}f}"
      if metric in c["ci"]:
        v += f" [{c['ci'][metric][0] * scale:.{digits}f}, {c['ci'][metric][1] * scale:.{digits}f}]"
      cells.append(v)
    avg = np.mean([agg["ceiling"][sp][metric] for sp in SPLITS]) * scale
    lines.append("| *Bayes ceiling: E[y\\* given x]* | " + " | ".join(cells) +
                 f" | {avg:.{digits}f} |")
  return lines


def _pair_cell(d: dict, scale: float, digits: int) -> str:
  return bootstrap.Interval(**d).format(scale, digits)


def render(agg: dict, *, main_names: list[str], ablation: list[str], wall_s: float | None,
           machine: str, signal: dict | None, chosen: dict) -> str:
  seeds = sorted({s for n in main_names for s in agg["methods"][n]["seeds"]})
  lines = ["# Synthetic Table 2: every method from the shared synthetic base", "",
           f"Seeds: {seeds} (ablation: {sorted({s for n in ablation for s in agg['methods'][n]['seeds']})}). "
           "Mean ± std over seeds (sample std) [95% bootstrap interval: seeds resampled, then "
           "items within each, `real_jax.bootstrap`]. Pearson, Spearman and Kendall × 100; MSE "
           "of the prediction against the target (mean of 3 graders). Settings: `chosen.json` "
           "(chosen on the in-domain validation split by `sweep.py`).", "",
           gate_line(gate(agg)), ""]
  for readout, title in (("rail", "RAIL readout (ŷ = Σ k·p(k))"),
                         ("standard", "standard readout (the sampled score digit)")):
    for metric, scale, digits in (("pearson", 100, 1), ("spearman", 100, 1),
                                  ("kendall", 100, 1), ("mse", 1, 3)):
      name = metric.capitalize() if metric != "mse" else "MSE"
      lines += [f"### {name}, {title}", ""]
      lines += _metric_table(agg, main_names, readout, metric, scale, digits,
                             ceiling=readout == "rail")
      lines.append("")
  if agg["pairs"]:
    lines += ["### Paired differences (same items, same seeds; 95% bootstrap interval, seeds "
              "then items, the same draws for both methods; * = excludes 0)", ""]
    for ro in ("rail", "standard"):
      lines += [f"{'RAIL' if ro == 'rail' else 'Standard'} readout: Pearson × 100 and MSE.", "",
                "| Pair | " + " | ".join(f"{SPLIT_TITLES[s]} Pearson" for s in SPLITS) + " | "
                + " | ".join(f"{SPLIT_TITLES[s]} MSE" for s in SPLITS) + " |",
                "|---|" + "---:|" * (2 * len(SPLITS))]
      for key, pair in agg["pairs"].items():
        a, b = key.split("-")
        label = f"{agg['methods'][a]['label']} − {agg['methods'][b]['label']}"
        cells = [_pair_cell(pair["splits"][sp][ro]["pearson"], 100, 1) for sp in SPLITS]
        cells += [_pair_cell(pair["splits"][sp][ro]["mse"], 1, 3) for sp in SPLITS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
      lines.append("")
  if ablation:
    lines += ["### Ablation: REAL β × λ at the chosen LR and budget (Pearson × 100, RAIL; "
              "every row over the ablation's seeds, the chosen combination included)", ""]
    lines += _metric_table(agg, ablation, "rail", "pearson", 100, 1, ceiling=False)
    lines.append("")
  if signal:
    keys = ("signal_binary", "signal_regression", "binary_acc", "entropy")
    lines += ["### Rollout signal under the warm-up policy (seed 0; groups of "
              f"{next(iter(signal['splits'].values()))['group_size']} CoTs at the RL settings)",
              "", "Share of groups whose rewards are not all equal under the binary "
              "(exact-match) and the regression reward; where only the latter varies, only "
              "REAL's reward can rank the CoTs.", "",
              "| Split | groups | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for sp, v in signal["splits"].items():
      lines.append(f"| {SPLIT_TITLES.get(sp, sp)} | {v['prompts']} | " +
                   " | ".join(f"{v[k]:.3f}" for k in keys) + " |")
    lines.append("")
  names = list(dict.fromkeys(main_names + ablation))
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
    lines += ["", "Per step (the share of a CoT's 4 steps with that part right: the item copied "
              "by its label, its sum, its answer copied, the verdict), mean over seeds:", "",
              "| Method | " + " | ".join(f"{SPLIT_TITLES[s]} {k}" for s in SPLITS
                                       for k in STEP_PARTS) + " |",
              "|---|" + "---:|" * (len(SPLITS) * len(STEP_PARTS))]
    for n in cot:
      st = agg["methods"][n]["cot_steps"]
      lines.append(f"| {agg['methods'][n]['label']} | " + " | ".join(
          f"{100 * st[sp][k]:.0f}%" for sp in SPLITS for k in STEP_PARTS) + " |")
    lines.append("")
    w = agg["methods"].get("warmup", {})
    if "cot_steps_per_seed" in w:
      lines += ["The CE warm-up per seed (every method of a seed starts from it):", "",
                "| Seed | " + " | ".join(f"{SPLIT_TITLES[s]} {k}" for s in SPLITS
                                        for k in ("all",) + STEP_PARTS) + " |",
                "|---|" + "---:|" * (len(SPLITS) * (len(STEP_PARTS) + 1))]
      for i, seed in enumerate(w["seeds"]):
        cells = [f"{100 * w['cot_right_per_seed'][sp][i]:.0f}%" if k == "all" else
                 f"{100 * w['cot_steps_per_seed'][sp][k][i]:.0f}%"
                 for sp in SPLITS for k in ("all",) + STEP_PARTS]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
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
  lines += ["### Settings (chosen.json)", "", "| Method | Settings | Validation " +
            "RAIL Pearson × 100 |", "|---|---|---:|"]
  for m, c in chosen.items():
    lines.append(f"| {m} | " + ", ".join(f"{k}={v}" for k, v in c["settings"].items()) +
                 f" | {100 * c['value']:.1f} |")
  lines.append("")
  items = ", ".join(f"{SPLIT_TITLES[s]} {agg['ceiling'][s]['n']}" for s in SPLITS
                    if s in agg["ceiling"])
  lines += [f"Items per split: {items}. Machine: {machine}."]
  if wall_s is not None:
    lines += [f"Wall time of the invocation that ran the runs: {wall_s / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def _curve_key(job: jobs_lib.Job) -> tuple[str, str]:
  if job.method in ("grpo", "real"):
    return "rl", "reward_mean"
  if job.method == "tract":
    return "tract2", "loss"
  return {"sft": "sft", "raft": "raft"}.get(job.method, ""), "loss"


def _series(wd: str, stage: str, key: str) -> list[tuple[int, float]]:
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [(r["step"], r[key]) for r in map(json.loads, f)
            if r.get("stage") == stage and r.get(key) is not None]


def plot(root: str, agg: dict, jobs: dict, names: list[str], out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  for n in [n for n in names if n != "base"]:
    stage, key = _curve_key(jobs[n])
    panels = [(axes[0, 1] if stage == "rl" else axes[0, 0], key)]
    if stage == "rl":
      panels += [(axes[1, 0], "signal_regression"), (axes[1, 1], "entropy")]
    for ax, k in panels:
      curves = [_series(jobs_lib.workdir(root, n, s), stage, k) for s in agg["methods"][n]["seeds"]]
      steps = [p[0] for p in curves[0]]
      ys = np.array([[p[1] for p in c[:len(steps)]] for c in curves if len(c) >= len(steps)])
      if len(steps):
        ax.plot(steps, ys.mean(0), label=agg["methods"][n]["label"] +
                (" (stage 2)" if stage == "tract2" else ""))
  axes[0, 0].set(title="supervised runs: training loss (mean over seeds)", xlabel="step",
                 ylabel="loss", yscale="log")
  axes[0, 1].set(title="RL runs: mean rollout reward (mean over seeds)", xlabel="update",
                 ylabel="reward (its own: binary for GRPO, −(ŷ−y)² for REAL)")
  axes[1, 0].set(title="RL runs: share of groups whose regression rewards differ", xlabel="update",
                 ylabel="share of groups")
  axes[1, 1].set(title="RL runs: policy entropy per CoT token (nats)", xlabel="update",
                 ylabel="entropy")
  for ax in axes.flat:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  curves_png = os.path.join(out_dir, "curves.png")
  fig.savefig(curves_png, dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(len(names), len(SPLITS), figsize=(9, 2.1 * len(names)),
                           sharex=True, sharey=True, squeeze=False)
  for i, n in enumerate(names):
    p = jobs_lib.load_predictions(jobs_lib.workdir(root, n, agg["methods"][n]["seeds"][0]))
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
  p.add_argument("--root", default=os.path.join(jobs_lib.RUNS, "synthetic_table"),
                 help="run directories (outside the work tree; shared with sweep.py)")
  p.add_argument("--out", default=jobs_lib.HERE, help="where results.md / results.json / PNGs go")
  p.add_argument("--chosen", default=CHOSEN, help="the sweep's chosen.json")
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--ablation_seeds", default="0,1", help="seeds of the β × λ ablation ('' = none)")
  p.add_argument("--only", default="", help="comma-separated main run names (default: all)")
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--gate", action="store_true",
                 help="only the warm-up of the first seed, then print the precondition")
  p.add_argument("--aggregate", action="store_true", help="skip the runs; rebuild the outputs")
  p.add_argument("--config_arg", default="", help="appended to the config argument, e.g. runlocal")
  p.add_argument("--extra", action="append", default=[],
                 help="a config override passed to every run (repeatable)")
  a = p.parse_args(argv)
  try:
    chosen = load_chosen(a.chosen)
  except ChosenError as e:
    print(f"run.py: {e}", file=sys.stderr)
    return 2
  jobs = study_jobs(chosen)
  try:
    seeds = [int(s) for s in a.seeds.split(",")]
    ab_seeds = [int(s) for s in a.ablation_seeds.split(",") if s.strip()]
  except ValueError:
    print(f"run.py: --seeds {a.seeds!r} / --ablation_seeds {a.ablation_seeds!r} must be "
          "comma-separated integers", file=sys.stderr)
    return 2
  main_names = a.only.split(",") if a.only else list(MAIN)
  unknown = [n for n in main_names if n not in MAIN]
  if unknown:
    print(f"run.py: unknown run names {unknown}; known: {list(MAIN)}", file=sys.stderr)
    return 2
  if a.gate:
    main_names, seeds, ab_seeds = ["warmup"], seeds[:1], []
  ablation = ablation_names(jobs) if ab_seeds else []
  seeds_of = {**{n: ab_seeds for n in ablation}, **{n: seeds for n in main_names}}
  items = list(dict.fromkeys((run_of(n), s) for n in main_names + ablation for s in seeds_of[n]))
  machine = jobs_lib.machine(a.jobs)
  try:
    wall = None if a.aggregate else jobs_lib.run_jobs(a.root, jobs, items, a.jobs, a.config_arg,
                                                      tuple(a.extra))
    agg = aggregate(a.root, jobs, list(dict.fromkeys(main_names + ablation)), seeds_of)
    signal = (rollout_signal(a.root, "warmup", seeds[0], a.config_arg)
              if "warmup" in agg["methods"] else None)
  except (jobs_lib.JobError, ValueError) as e:
    print(f"run.py: {e}", file=sys.stderr)
    return 2
  if not agg["methods"]:
    print(f"run.py: no finished run under {a.root} (run it without --aggregate)", file=sys.stderr)
    return 2
  g = gate(agg)
  print(gate_line(g))
  if a.gate:
    if signal:
      for sp, v in signal["splits"].items():
        print(f"  {SPLIT_TITLES.get(sp, sp)}: groups with signal: binary {v['signal_binary']:.3f}"
              f", regression {v['signal_regression']:.3f}; entropy {v['entropy']:.3f}")
    return 0
  previous = os.path.join(a.out, "results.json")
  if wall is None and os.path.exists(previous):  # --aggregate keeps the runs' wall time
    with open(previous) as f:  # and the machine line of the invocation that ran them
      prev = json.load(f)
    wall, machine = prev.get("wall_s"), prev.get("machine", machine)
  os.makedirs(a.out, exist_ok=True)
  names = [n for n in main_names if n in agg["methods"]]
  abl = [n for n in ablation if n in agg["methods"]]
  md = render(agg, main_names=names, ablation=abl, wall_s=wall, machine=machine, signal=signal,
              chosen=chosen)
  with open(os.path.join(a.out, "results.md"), "w") as f:
    f.write(md)
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({**agg, "gate": g, "signal": signal, "chosen": chosen, "wall_s": wall,
               "machine": machine}, f, indent=1)
  pngs = plot(a.root, agg, jobs, list(dict.fromkeys(names + [n for n in abl if n == run_of(n)])),
              a.out)
  print(md)
  print("wrote", os.path.join(a.out, "results.md"), *pngs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
