r"""Settings for every method of the synthetic study, chosen on the in-domain VALIDATION split.

  python experiments/synthetic_table/sweep.py            # the runs, then sweep.md and chosen.json
  python experiments/synthetic_table/sweep.py --aggregate   # rebuild them from finished runs

Seed 0. Every sweep run evaluates only the validation split (192 training records held out,
`data.val_size`; in domain): `eval.at_end=false`, periodic evaluations every `every` steps and one
of the final parameters, so no test or out-of-domain item is ever read while choosing. Each
candidate budget is a prefix of one constant-learning-rate run (the LR schedule does not
depend on the run's length), read at the evaluation of that step. The metric is the validation
RAIL Pearson (`eval.best_metric`). Two stages, the second on the first one's choice:

  A  from the base: the warm-up (SFT; LR x steps), RAFT (LR x full-vocabulary / renormalised ŷ
     x steps) and TRACT (LR x λ x ŷ; stage-2 steps).
  B  from the chosen warm-up (the study's own `warmup` run of seed 0): standard RL (GRPO) and
     REAL over the same LR x updates grid. REAL keeps the authors' β = 0, λ = 1 (their shipped
     scripts), so both RL methods get the same number of candidates; its β x λ grid is the
     study's ablation. RL from TRACT reuses these settings.

Writes sweep.md (every candidate's validation value, the chosen ones marked) and chosen.json
(`{method: {settings, split: "validation", metric, value, run}}`), which `run.py` reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs as jobs_lib  # noqa: E402  (this directory's shared runner)

CHOSEN = os.path.join(jobs_lib.HERE, "chosen.json")
METRIC = "rail/pearson"


@dataclasses.dataclass(frozen=True)
class Grid:
  """The candidates. `smoke()`: the same stages at a few steps (tests)."""
  sft_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # the same LRs for RAFT and TRACT
  sft_steps: int = 400
  sft_every: int = 100
  raft_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
  raft_renorm: tuple[bool, ...] = (False, True)
  raft_steps: int = 300
  raft_every: int = 100
  # (LR, λ, renormalised ŷ): the authors' λ = 1 with the full-vocabulary ŷ at two LRs, then a
  # smaller weight of the squared error and the ŷ renormalised over the score tokens.
  tract_grid: tuple[tuple[float, float, bool], ...] = (
      (3e-4, 1.0, False), (1e-3, 1.0, False), (1e-3, 0.1, False), (1e-3, 1.0, True),
      (3e-3, 1.0, False))
  tract_steps: int = 300  # stage 2, read every `tract_every` steps
  tract_stage1_steps: int = 300
  tract_every: int = 100
  rl_lrs: tuple[float, ...] = (5e-5, 2e-4, 1e-3)  # the same for GRPO and REAL
  rl_budgets: tuple[int, ...] = (20, 60, 150)
  rl_every: int = 20

  @classmethod
  def smoke(cls) -> "Grid":
    return cls(sft_lrs=(3e-3,), sft_steps=40, sft_every=20, raft_lrs=(3e-3,), raft_renorm=(False,),
               raft_steps=2, raft_every=1, tract_grid=((3e-3, 1.0, False),),
               tract_steps=2, tract_stage1_steps=40, tract_every=1, rl_lrs=(1e-3,), rl_budgets=(2, 4),
               rl_every=2)


def _val(every: int) -> tuple[str, ...]:
  return ("--config.eval.at_end=false", "--config.eval.after_warmup=false",
          f"--config.eval.every={every}", f"--config.eval.best_metric={METRIC}")


BUDGET_KEY = {"sft": "train.steps", "raft": "train.steps", "tract2": "tract.stage2_steps",
              "rl": "rl.steps"}


def _candidate(name: str, method: str, label: str, stage: str, settings: dict, last: int,
               every: int, after: str | None = None) -> tuple:
  """(job, stage read, last step, settings without the budget, candidate budgets) of one sweep
  run: `settings` plus the stage's budget `last`, validation every `every` steps."""
  args = jobs_lib.settings_args({**settings, BUDGET_KEY[stage]: last}) + _val(every)
  job = jobs_lib.Job(name, method, label, args, after=after, done=f"eval/{stage}_final_val.json")
  return job, stage, last, settings, list(range(every, last + 1, every))


def stage_a(g: Grid) -> dict[str, tuple[jobs_lib.Job, str, int, dict, list[int]]]:
  """name -> (job, stage read, last step, settings without the budget, candidate budgets)."""
  out = {}
  for lr in g.sft_lrs:
    name = f"sweep_sft_lr{lr:g}"
    out[name] = _candidate(name, "sft", f"sweep SFT lr={lr:g}", "sft", {"train.lr": lr},
                           g.sft_steps, g.sft_every)
  for lr in g.raft_lrs:
    for rn in g.raft_renorm:
      name = f"sweep_raft_lr{lr:g}_{'renorm' if rn else 'full'}"
      out[name] = _candidate(name, "raft", name.replace("_", " "), "raft",
                             {"train.lr": lr, "raft.renormalize": rn}, g.raft_steps, g.raft_every)
  for lr, lam, rn in g.tract_grid:
    name = f"sweep_tract_lr{lr:g}_lam{lam:g}_{'renorm' if rn else 'full'}"
    s = {"train.lr": lr, "tract.lam": lam, "raft.renormalize": rn,
         "tract.stage1_steps": g.tract_stage1_steps}
    out[name] = _candidate(name, "tract", name.replace("_", " "), "tract2", s, g.tract_steps,
                           g.tract_every)
  return out


A_METHODS = {"sft": "warmup", "raft": "raft", "tract": "tract"}


def stage_b(g: Grid) -> dict:
  out = {}
  for method, label in (("grpo", "GRPO"), ("real", "REAL")):
    for lr in g.rl_lrs:
      s = {"rl.lr": lr} if method == "grpo" else jobs_lib.real_settings(lr)
      name = f"sweep_{method}_lr{lr:g}"
      last = max(g.rl_budgets)
      out[name] = (jobs_lib.Job(name, method, f"sweep {label} lr={lr:g}",
                                jobs_lib.settings_args({**s, "rl.steps": last}) + _val(g.rl_every),
                                after="warmup", done="eval/rl_final_val.json"),
                   "rl", last, s, list(g.rl_budgets))
  return out


def candidates(root: str, specs: dict) -> list[dict]:
  """Every (run, settings, budget) with its validation value (NaN where none: a constant ŷ)."""
  rows = []
  for name, (job, stage, last, s, budgets) in specs.items():
    wd = jobs_lib.workdir(root, name, 0)
    curve = jobs_lib.validation_curve(wd, stage, last, METRIC)
    for b in budgets:
      rows.append({"run": name, "method": job.method, "settings": {**s, BUDGET_KEY[stage]: b},
                   "value": curve.get(b, float("nan"))})
  return rows


class NoCandidates(RuntimeError):
  """No finished sweep run with a finite validation value (run the sweep first)."""


def best(rows: list[dict]) -> dict:
  """The candidate with the highest validation value (the first of equals: the smaller budget,
  the grid's order)."""
  ok = [r for r in rows if math.isfinite(r["value"])]
  if not ok:
    raise NoCandidates(f"no finite validation value among {sorted({r['run'] for r in rows})} "
                       "(unfinished runs? run sweep.py without --aggregate)")
  return max(ok, key=lambda r: r["value"])  # max keeps the first of equals


def _choice(r: dict) -> dict:
  return {"settings": r["settings"], "split": "validation", "metric": METRIC,
          "value": r["value"], "run": f"{r['run']}_s0"}


def sweep(root: str, g: Grid, n_jobs: int, config_arg: str, extra: tuple[str, ...],
          run: bool = True) -> tuple[dict, list[dict], float]:
  """Runs both stages (unless `run` is False) and returns (chosen, every candidate, seconds)."""
  wall = 0.0
  items = lambda specs: [(n, 0) for n in specs]
  a = stage_a(g)
  if run:
    wall += jobs_lib.run_jobs(root, {n: v[0] for n, v in a.items()}, items(a), n_jobs,
                              config_arg, extra, tag="sweep A")
  rows = candidates(root, a)
  chosen = {A_METHODS[m]: _choice(best([r for r in rows if r["method"] == m]))
            for m in ("sft", "raft", "tract")}
  b = stage_b(g)
  jobs = {"warmup": jobs_lib.warmup_job(chosen["warmup"]["settings"]), **{n: v[0] for n, v in b.items()}}
  if run:
    wall += jobs_lib.run_jobs(root, jobs, [("warmup", 0)] + items(b), n_jobs, config_arg, extra,
                              tag="sweep B")
  rows_b = candidates(root, b)
  rows += rows_b
  for m in ("grpo", "real"):
    chosen[m] = _choice(best([r for r in rows_b if r["method"] == m]))
  return chosen, rows, wall


def render(chosen: dict, rows: list[dict], wall_s: float | None, machine: str) -> str:
  picked = {(c["run"], json.dumps(c["settings"], sort_keys=True)) for c in chosen.values()}
  lines = ["# Sweep: every candidate on the in-domain validation split (seed 0)", "",
           f"Metric: validation {METRIC} × 100 (192 held-out training records). **Bold**: the "
           "chosen setting of its method (`chosen.json`).", "",
           "| Method | Run | Settings | Validation Pearson × 100 |", "|---|---|---|---:|"]
  for r in rows:
    key = (f"{r['run']}_s0", json.dumps(r["settings"], sort_keys=True))
    s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
    v = "–" if not math.isfinite(r["value"]) else f"{100 * r['value']:.1f}"
    if key in picked:
      v = f"**{v}**"
    lines.append(f"| {r['method']} | {r['run']} | {s} | {v} |")
  lines += ["", "Chosen (`chosen.json`): " + "; ".join(
      f"{m}: " + ", ".join(f"{k}={v}" for k, v in c["settings"].items())
      for m, c in chosen.items()) + ".", "", f"Machine: {machine}."]
  if wall_s is not None:
    lines.append(f"Wall time of the invocation that ran the runs: {wall_s / 60:.1f} min.")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default=os.path.join(jobs_lib.RUNS, "synthetic_table"),
                 help="run directories (shared with run.py, which reuses the warm-up)")
  p.add_argument("--out", default=jobs_lib.HERE, help="where sweep.md / chosen.json go")
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--aggregate", action="store_true", help="no runs; rebuild the outputs")
  p.add_argument("--smoke", action="store_true", help="a few steps per run (tests)")
  p.add_argument("--config_arg", default="", help="appended to the config argument (runlocal)")
  p.add_argument("--extra", action="append", default=[], help="an override for every run")
  a = p.parse_args(argv)
  if a.smoke and os.path.abspath(a.out) == os.path.abspath(jobs_lib.HERE):
    print("sweep.py: --smoke needs its own --out (it must not replace the committed chosen.json)",
          file=sys.stderr)
    return 2
  g = Grid.smoke() if a.smoke else Grid()
  machine = jobs_lib.machine(a.jobs)
  try:
    chosen, rows, wall = sweep(a.root, g, a.jobs, a.config_arg, tuple(a.extra),
                               run=not a.aggregate)
  except (NoCandidates, jobs_lib.JobError) as e:
    print(f"sweep.py: {e}", file=sys.stderr)
    return 2
  os.makedirs(a.out, exist_ok=True)
  prev = os.path.join(a.out, "sweep.json")
  if a.aggregate and os.path.exists(prev):
    with open(prev) as f:
      wall = json.load(f).get("wall_s")
  with open(os.path.join(a.out, "chosen.json"), "w") as f:
    json.dump(chosen, f, indent=1)
  with open(os.path.join(a.out, "sweep.json"), "w") as f:
    json.dump({"candidates": rows, "wall_s": wall, "machine": machine}, f, indent=1)
  md = render(chosen, rows, wall, machine)
  with open(os.path.join(a.out, "sweep.md"), "w") as f:
    f.write(md)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
