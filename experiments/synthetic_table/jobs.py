"""What the sweep (`sweep.py`) and the study (`run.py`) share: a run is a `Job` (a method of
`configs/synthetic.py` with config overrides, maybe started from another job's checkpoint),
its workdir is <root>/<name>_s<seed>, and `run_jobs` runs the unfinished ones two at a time,
each pinned to one CPU core, resuming half-done runs from their checkpoints."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

from real_jax import evaluate as ev
from real_jax.train import config_lib, data_utils

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
# Study workdirs live outside the work tree (REAL_JAX_RUNS, default ~/real_jax_runs).
RUNS = os.environ.get("REAL_JAX_RUNS", os.path.join(os.path.expanduser("~"), "real_jax_runs"))
SPLITS = ("test", "test_ood_hard", "test_ood_rubric")
SPLIT_TITLES = {"test": "ID", "test_ood_hard": "OOD hard", "test_ood_rubric": "OOD rubric"}
VAL = data_utils.VAL_SPLIT
# The stage whose last checkpoint a job started from another (`Job.after`) loads, by the
# method of that other job: the warm-up's SFT stage, TRACT's second stage.
AFTER_STAGE = {"sft": "sft", "tract": "tract2"}


@dataclasses.dataclass(frozen=True)
class Job:
  """One run: `python -m real_jax.main --config configs/synthetic.py:method=<method>` plus
  `args`; `after` names the job whose checkpoint it starts from (same seed). It is finished
  when `done` exists in its workdir ("" = results.json has its final row)."""
  name: str
  method: str
  label: str
  args: tuple[str, ...] = ()
  after: str | None = None
  done: str = ""


def settings_args(settings: dict) -> tuple[str, ...]:
  """Config overrides: {"rl.lr": 0.001, "raft.renormalize": True} -> --config.rl.lr=0.001 ..."""
  return tuple(f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
               for k, v in settings.items())


def real_settings(lr: float, steps: int | None = None, beta: float = 0.0, lam: int = 1) -> dict:
  """REAL's config fields (the defaults: the authors' β = 0, λ = 1); λ = 0 also drops the π(y*)
  shaping (the authors' λ = 1 has both)."""
  s = {"rl.lr": lr, "rl.beta": beta, "rl.lam": lam, "rl.shaping": "prob" if lam else "none"}
  return s if steps is None else {**s, "rl.steps": steps}


def single_core_env() -> dict:
  """The environment of a run pinned to one core: XLA:CPU on one thread, TF quiet."""
  return dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
              "intra_op_parallelism_threads=1", TF_CPP_MIN_LOG_LEVEL="2")


def warmup_job(settings: dict) -> Job:
  """The CE warm-up of the study (every seed) and of the sweep's RL candidates (seed 0)."""
  return Job("warmup", "sft", "CE warm-up (SFT)", settings_args(settings))


def machine(n_jobs: int) -> str:
  """The machine and its load when the invocation started, for the tables' footers."""
  cpu = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({cpu or 'unknown CPU'}), "
          f"1-minute load {load:.2f} at the start, {n_jobs} runs at a time (one core each)")


def workdir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f"{name}_s{seed}")


class JobError(RuntimeError):
  """A run that failed, waits on a run outside the invocation, or was run with other settings."""


def check_settings(job: Job, wd: str) -> None:
  """Raises JobError when the run in `wd` was made with other values of the job's `--config.*`
  settings than the job has now (e.g. a chosen.json that changed since)."""
  path = os.path.join(wd, "run.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    config = json.load(f)["config"]
  for arg in job.args:
    key, _, want = arg[len("--config."):].partition("=")
    try:
      have = config_lib.get_field(config, key)
    except (KeyError, TypeError):
      continue
    if isinstance(have, bool):
      try:
        same = have == config_lib.parse_bool(want)
      except ValueError:
        same = False
    elif isinstance(have, str):
      same = have == want
    else:
      same = float(have) == float(want)
    if not same:
      raise JobError(f"{wd} was run with {key}={have}, not {want}; remove it or use another "
                     "--root")


def finished(job: Job, wd: str) -> bool:
  check_settings(job, wd)
  if job.done:
    return os.path.exists(os.path.join(wd, job.done))
  p = os.path.join(wd, "results.json")
  if not os.path.exists(p):
    return False
  with open(p) as f:
    rows = json.load(f).get("rows", [])
  return any(r.get("name") not in ("warm-up (SFT)", "initial model") for r in rows)


def command(root: str, jobs: dict[str, Job], name: str, seed: int, config_arg: str = "",
            extra: tuple[str, ...] = ()) -> list[str]:
  j = jobs[name]
  arg = f"method={j.method}" + (f",{config_arg}" if config_arg else "")
  cmd = [sys.executable, "-m", "real_jax.main", f"--config={CONFIG}:{arg}",
         f"--workdir={workdir(root, name, seed)}", f"--config.seed={seed}",
         f"--config.name={j.label}", "--config.eval.before_training=false"]
  if j.after:
    stage = AFTER_STAGE[jobs[j.after].method]
    cmd += [f"--config.init.checkpoint={workdir(root, j.after, seed)}",
            f"--config.init.stage={stage}", "--config.warmup.steps=0",
            "--config.eval.after_warmup=false"]
  return cmd + list(j.args) + list(extra)


def run_jobs(root: str, jobs: dict[str, Job], items: list[tuple[str, int]], n_jobs: int = 2,
             config_arg: str = "", extra: tuple[str, ...] = (), tag: str = "study") -> float:
  """Runs the unfinished (name, seed) items, `n_jobs` at a time (each on its own core), a job
  after the job it starts from; prints progress with rate and ETA. Returns seconds."""
  if not 1 <= n_jobs <= (os.cpu_count() or 1):
    raise JobError(f"--jobs {n_jobs}: give 1 to {os.cpu_count()} (one core per run)")
  rank = {n: (0 if j.after is None and any(k.after == n for k in jobs.values()) else
              1 if j.after else 2) for n, j in jobs.items()}
  order = sorted(items, key=lambda it: (rank[it[0]], it[1]))
  todo = [it for it in order if not finished(jobs[it[0]], workdir(root, *it))]
  done = {it for it in order if it not in todo}
  t0 = time.time()
  print(f"[{tag}] {len(todo)} runs to do ({len(done)} already finished), {n_jobs} at a time",
        flush=True)
  free = list(range(n_jobs))
  n_done = 0

  def one(item, core):
    n, s = item
    wd = workdir(root, n, s)
    os.makedirs(wd, exist_ok=True)
    env = single_core_env()
    t = time.time()
    with open(os.path.join(wd, "log.txt"), "a") as log:
      pin = ["taskset", "-c", str(core)] if shutil.which("taskset") and n_jobs > 1 else []
      rc = subprocess.call(pin + command(root, jobs, n, s, config_arg, extra), stdout=log,
                           stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return item, rc, time.time() - t

  pending = list(todo)
  with ThreadPoolExecutor(n_jobs) as ex:
    running = {}
    while pending or running:
      ready = [it for it in pending
               if jobs[it[0]].after is None or (jobs[it[0]].after, it[1]) in done
               or finished(jobs[jobs[it[0]].after], workdir(root, jobs[it[0]].after, it[1]))]
      while ready and free:
        it = ready.pop(0)
        pending.remove(it)
        core = free.pop(0)
        running[ex.submit(one, it, core)] = core
      if not running:
        raise JobError(f"runs wait on runs that are not part of this invocation: {pending}")
      fut = next(iter(wait(list(running), return_when=FIRST_COMPLETED)[0]))
      free.append(running.pop(fut))
      (n, s), rc, dt = fut.result()
      if rc != 0:
        raise JobError(f"run {n} seed {s} failed (exit {rc}); see "
                           f"{os.path.join(workdir(root, n, s), 'log.txt')}")
      done.add((n, s))
      n_done += 1
      el = time.time() - t0
      eta = el / n_done * (len(todo) - n_done)
      print(f"[{tag}] {n_done}/{len(todo)} done: {n} seed {s} in {dt:.0f}s | elapsed "
            f"{el / 60:.1f} min, {n_done / el * 3600:.1f} runs/h, ETA {eta / 60:.1f} min",
            flush=True)
  return time.time() - t0


def validation_curve(wd: str, stage: str, last: int,
                     metric: str = "rail/pearson") -> dict[int, float]:
  """step -> the validation metric of a run's periodic evaluations (eval/<stage>_step*.json) and
  of its final parameters (eval/<stage>_final_val.json, at the stage's `last` step)."""
  readout, name = metric.split("/")
  out = {}
  d = os.path.join(wd, "eval")
  for fn in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if not (fn.startswith(f"{stage}_step") or fn == f"{stage}_final_val.json"):
      continue
    if not fn.endswith(".json"):
      continue
    with open(os.path.join(d, fn)) as f:
      data = json.load(f)
    step = last if fn == f"{stage}_final_val.json" else int(fn[len(stage) + 5:-5])
    v = data["summary"]["splits"][VAL][readout][name]
    out[step] = float("nan") if v is None else float(v)
  return dict(sorted(out.items()))


def final_tag(wd: str) -> str:
  return "eval" if os.path.exists(os.path.join(wd, "eval", "eval.json")) else "final"


def load_predictions(wd: str) -> dict[str, dict[str, np.ndarray]]:
  """split -> {index, target, rail, standard, valid} of a run's final evaluation."""
  return ev.read_predictions(wd, final_tag(wd))
