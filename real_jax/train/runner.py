"""What every stage shares: the run it belongs to (`Run`) and the stage runner (`StageRunner`)
that owns resume, checkpoints, periodic evaluation, the best checkpoint and the kill hook.

A stage's loop is then only its own work (big_vision's one readable loop):

  stage = run.runner.open("rl", params, tx, total=steps, main=main)
  if stage.finished:
    return stage.close()
  stage.restore_data(batcher)                        # the data position of the checkpoint
  for step in range(stage.start, steps):
    stage.state, metrics = step_fn(stage.state, batch)
    run.writer.write("rl", step + 1, metrics)
    stage.end_step(step + 1, data=batcher.state(),   # eval + best, save when due, kill hook
                   applied=metrics["applied"])       # skipped-step bookkeeping
  return stage.close()

Every stage checkpoints on its own (`<workdir>/ckpt/<stage>`) and resumes exactly from its last
checkpoint: parameters, optimizer state, step, RNG, the data position and the best-so-far.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.models import Qwen3Config
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train import config_lib
from real_jax.train import data_utils
from real_jax.train import state as state_lib
from real_jax.train.metrics import MetricsWriter, eval_metrics, lookup
from real_jax.train.settings import RunSettings

__all__ = ["PeriodicEval", "SimulatedKill", "TooManySkippedSteps", "JudgeVocab", "Sources", "Run",
    "StageRunner", "Stage"]

# evaluate(params, *, tag, validation) -> an evaluation summary (`evaluate.summarize` layout)
PeriodicEval = Callable[..., Mapping[str, Any]]


class SimulatedKill(RuntimeError):
  """Raised by `config.debug.stop_after` (tests of exact resume)."""


class TooManySkippedSteps(RuntimeError):
  """`optim.max_skipped_in_a_row` consecutive steps were non-finite: the run stops."""


@dataclasses.dataclass(frozen=True)
class JudgeVocab:
  """The run's tokenizer and what the judge reads from it once: the score tokens, the pad id
  and the delimiter's ids at the start of a response (RAFT's direct readout)."""
  tokenizer: Any
  directory: str
  score_tokens: ScoreTokens
  pad_id: int
  delim_start: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Sources:
  """The run's records: training (minus the validation part), validation (or None) and the
  evaluation splits by display name."""
  train: Any
  val: Any
  evals: dict


@dataclasses.dataclass(frozen=True)
class Run:
  """What the stages of one run read (built once by `main.setup`, never changed after)."""
  config: Any
  workdir: str
  mesh: Mesh
  graphdef: Any
  model_cfg: Qwen3Config
  vocab: JudgeVocab
  settings: RunSettings  # resolved once from `config` (train/settings.py)
  sources: Sources
  writer: MetricsWriter
  runner: "StageRunner"


class StageRunner:
  """Opens stages (resumed from their checkpoint or fresh), runs their per-step bookkeeping and
  offers the final parameters for the best checkpoint.

  Args:
    config: the run config (`checkpoint`, `eval.every`, `eval.best_metric`, `debug.stop_after`,
      `seed`).
    workdir, mesh, writer: where checkpoints and metrics go.
    evaluate: periodic evaluation `evaluate(params, *, tag, validation)`, or None (no periodic
      evaluation and no best checkpoint).
    has_validation: the run has a validation split: periodic evaluations run on it and select
      the best checkpoint (otherwise they run on the test splits and select nothing).
  """

  def __init__(self, config, workdir: str, mesh: Mesh, writer: MetricsWriter, *,
               evaluate: PeriodicEval | None, has_validation: bool):
    self.config, self.workdir, self.mesh, self.writer = config, workdir, mesh, writer
    self.evaluate, self.has_validation = evaluate, has_validation
    self.skipped_steps: dict[str, tuple[int, int]] = {}  # stage -> (skipped, optimiser steps)

  def open(self, stage: str, params_in, tx, *, total: int, main: bool,
           copy_params: bool = False) -> "Stage":
    """The stage's train state: restored from its last checkpoint, or built from `params_in`
    (copied first with `copy_params`, when the caller still needs `params_in`)."""
    c = self.config
    ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(self.workdir, stage),
                               max_to_keep=c.checkpoint.max_to_keep,
                               async_save=c.checkpoint.async_save)
    shardings = state_lib.state_shardings(params_in, tx, self.mesh)
    abstract = state_lib.abstract_state(params_in, tx)
    found = ck.restore_newest(lambda step: ck.restore(step, abstract, shardings))
    if found is not None:
      latest, (state, meta) = found
      logging.info("[%s] resuming from step %d (%s)", stage, latest, ck.directory)
      self.writer.truncate(stage, latest)
      return Stage(self, stage, ck, state, shardings, int(latest), meta, total, main)
    self.writer.drop_stage(stage)
    params = jax.tree.map(lambda x: x.copy(), params_in) if copy_params else params_in
    state, shardings = state_lib.init_state(params, tx, self.mesh, c.seed)
    return Stage(self, stage, ck, state, shardings, 0, {}, total, main)

  def keep_best(self, stage: str, step: int, params, val_summary, best):
    """Keeps `params` as the stage's best checkpoint if its validation metric is the best yet.
    Returns the best's metadata."""
    split = data_utils.VAL_SPLIT
    metric = self.config.eval.best_metric
    if not metric or split not in val_summary["splits"]:
      return best
    value = lookup(val_summary, f"splits/{split}/{metric}")
    if not _better(metric, value, best):
      return best
    best_ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(self.workdir, stage, best=True),
                                    max_to_keep=1, async_save=False, items=("params", "meta"))
    best_ck.save(step, params=params, meta={"metric": metric, "split": split, "value": value,
                                            "step": step})
    best_ck.close()
    logging.info("[%s] new best validation %s = %.4f at step %d", stage, metric, value, step)
    return {"metric": metric, "split": split, "value": value, "step": step}

  def offer_best(self, stage: str, params) -> dict | None:
    """The final parameters compete for the best checkpoint too (step = the stage's last), on
    the validation split. Returns the best's metadata (None without a validation split)."""
    if not self.config.eval.best_metric or not self.has_validation or self.evaluate is None:
      return None
    main = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(self.workdir, stage), async_save=False)
    step = main.latest_step()
    main.close()
    if step is None:
      return None
    val_summary = self.evaluate(params, tag=f"{stage}_final_val", validation=True)
    best = None
    best_dir = ckpt_lib.stage_dir(self.workdir, stage, best=True)
    if shd.agree(os.path.isdir(best_dir)):  # all processes open it, or none
      ck = ckpt_lib.Checkpointer(best_dir, async_save=False, items=("params", "meta"))
      if ck.latest_step() is not None:
        best = ck.restore_meta(ck.latest_step())
      ck.close()
    return self.keep_best(stage, int(step), params, val_summary, best)


class Stage:
  """One open stage: its train state (`state`, replaced by the loop after every step), the step
  it starts from, and the checkpoint bookkeeping of `end_step`."""

  def __init__(self, runner: StageRunner, name: str, ck, state, shardings, start: int,
               meta: dict, total: int, main: bool):
    self.runner, self.name, self.ck = runner, name, ck
    self.state, self.shardings, self.start, self.meta = state, shardings, start, meta
    self.total, self.main = total, main
    self.best = meta.get("best")
    self._applied: list = []  # per step since the last check: 1 if an update was applied
    self.skipped_in_a_row = 0  # the trailing run of skipped steps at the last check

  @property
  def finished(self) -> bool:
    """The checkpoint is the stage's last: nothing left to run."""
    return bool(self.meta.get("done"))

  def restore_data(self, source) -> None:
    """Puts a resumable data source (`state()` / `restore()`) at the checkpoint's position."""
    if self.meta.get("data"):
      try:
        source.restore(self.meta["data"])
      except ValueError as e:
        raise config_lib.ConfigError(
            f"stage {self.name}: the training data changed since this workdir's checkpoint "
            f"({e}); resume with the same data, or use a new --workdir") from None

  def end_step(self, done: int, *, data, applied, check: bool = False) -> None:
    """After optimiser step (or RL update) `done`: the skipped-step check, periodic evaluation
    and the best checkpoint (main stage only), a checkpoint every `checkpoint.every` steps and at
    the end (with the data position `data`), then the kill hook of the resume tests.

    `applied` is the step's `metrics["applied"]` (for an RL update: 1 if any of its optimiser
    steps was applied), left on the device: the flags are fetched together (one host
    synchronisation) every `log.every` steps, at the stage's end, and at every step when `check`
    (a caller that has them on the host already). `optim.max_skipped_in_a_row` then stops a run
    up to `log.every` steps after the limit is reached, never later."""
    c = self.runner.config
    self._applied.append(applied)
    if check or done % c.log.every == 0 or done == self.total:
      self._check_skipped(done)
    self.best = self._maybe_eval(done)
    if self.main and c.debug.kill_at_step == done:  # a real kill, between two checkpoints
      os.kill(os.getpid(), signal.SIGKILL)
    if done % c.checkpoint.every == 0 or done == self.total:
      self.ck.save(done, self.state, {"data": data, "done": done == self.total,
                                      "best": self.best, "stage": self.name})
      if self.main and c.debug.kill_in_save == done:  # the asynchronous save is in flight
        os.kill(os.getpid(), signal.SIGKILL)
    n = c.debug.stop_after
    if self.main and n and done - self.start >= n:
      self.ck.close()
      raise SimulatedKill(f"debug.stop_after={n}: stopping after {done - self.start} steps")

  def _check_skipped(self, done: int) -> None:
    """Counts steps (RL updates) whose every optimiser step was skipped as non-finite, step by
    step from the flags since the last check; stops the run when `optim.max_skipped_in_a_row` of
    them came in a row, keeping the last checkpoint."""
    flags = [float(a) for a in shd.to_host(self._applied)]
    first, self._applied = done - len(flags) + 1, []
    limit = self.runner.config.optim.max_skipped_in_a_row
    reached = None  # the step at which the limit was reached
    for i, a in enumerate(flags):
      self.skipped_in_a_row = self.skipped_in_a_row + 1 if a == 0 else 0
      if limit and reached is None and self.skipped_in_a_row >= limit:
        reached = first + i
    if reached is not None:
      skipped = int(self.state["skipped"])
      self.ck.wait()
      last = self.ck.latest_step()
      self.ck.close()
      raise TooManySkippedSteps(
          f"stage {self.name}: {limit} steps in a row up to step {reached} had a non-finite "
          f"loss, gradient or update ({skipped} skipped in all by step {done}); stopping (the last "
          f"checkpoint{f', step {last},' if last is not None else ''} is kept). Lower the "
          f"learning rate or check the data; optim.max_skipped_in_a_row={limit} sets the limit")

  def close(self):
    """Waits for the last checkpoint; returns the final parameters."""
    self.runner.skipped_steps[self.name] = (int(self.state["skipped"]), int(self.state["step"]))
    self.ck.close()
    self.runner.writer.flush()
    return self.state["params"]

  def _maybe_eval(self, step: int):
    """Periodic evaluation (every eval.every steps of the main stage) of the validation split
    (the test splits when the run has none) and best-checkpoint keeping on it."""
    r = self.runner
    every = r.config.eval.every
    if not (self.main and every and step % every == 0 and step < self.total
            and r.evaluate is not None):
      return self.best
    summary = r.evaluate(self.state["params"], tag=f"{self.name}_step{step:06d}",
                         validation=r.has_validation)
    r.writer.write(f"eval_{self.name}", step,
                   eval_metrics(summary, "val" if r.has_validation else "avg"))
    if not r.has_validation:
      return self.best
    return r.keep_best(self.name, step, self.state["params"], summary, self.best)


def _better(metric: str, value: float, best) -> bool:
  if not np.isfinite(value):
    return False
  if best is None:
    return True
  return value < best["value"] if metric.endswith("mse") else value > best["value"]
