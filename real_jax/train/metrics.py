"""Metrics: JSONL in the workdir, TensorBoard when tensorboardX is installed, progress lines
with rate and ETA, and the metrics of an RL update and of a periodic evaluation assembled from
their parts (`RolloutStats`, `rl_update_metrics`, `eval_metrics`, `lookup`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

__all__ = ["summary_writer_class", "ROLLOUTS_FILE", "MetricsWriter", "read_metrics", "format_duration",
    "HEARTBEAT_SECS", "set_heartbeat", "Progress", "fmt_metrics", "lookup", "eval_metrics",
    "RolloutStats", "rl_update_metrics"]


def _jsonable(v: Any) -> Any:
  if isinstance(v, np.ndarray) and v.ndim == 0:
    v = v.item()
  elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def summary_writer_class():
  """tensorboardX's `SummaryWriter`, imported without torch: tensorboardX's writer module imports
  torch whenever it is installed (about 1 s and 190 MiB per run) only to accept torch tensors,
  which we never pass. Blocking the name for that one import keeps torch out of a run."""
  if "tensorboardX.writer" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # `import torch` raises ImportError; tensorboardX expects that
    try:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional dependency
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # noqa: PLC0415
  return SummaryWriter


ROLLOUTS_FILE = "rollouts.jsonl"


class MetricsWriter:
  """Appends `{"stage", "step", "time", **metrics}` lines to `<workdir>/metrics.jsonl` (and the
  same scalars to TensorBoard and, given a `wandb_log.WandbLogger`, to W&B); rollout samples
  to `<workdir>/rollouts.jsonl` (TensorBoard text, a W&B table)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, filename: str = "metrics.jsonl",
               enabled: bool = True, wandb: Any = None):
    self.path = os.path.join(workdir, filename)
    self.rollouts_path = os.path.join(workdir, ROLLOUTS_FILE)
    self.enabled = enabled  # False on every process but the first of a multi-process run
    self.wandb = wandb if enabled else None
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tb")
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      try:
        self._tb = summary_writer_class()(self._tb_dir)
      except Exception as e:  # tensorboardX missing or unusable: JSONL only
        logging.info("TensorBoard summaries off (%s)", e)

  def truncate(self, stage: str, after_step: int) -> None:
    """Drops rows of `stage` with step > after_step (a resumed run re-logs them), in
    metrics.jsonl and rollouts.jsonl."""
    if not self.enabled:
      return
    _truncate_jsonl(self.rollouts_path, stage, after_step)
    if not _truncate_jsonl(self.path, stage, after_step):
      return
    self._rebuild_tensorboard()

  def _rebuild_tensorboard(self) -> None:
    """Rewrites the TensorBoard events from metrics.jsonl (after a resume truncated it): the
    events then agree with the JSONL exactly, with no rows twice and none lost unflushed."""
    if self._tb is None:
      return
    self._tb.close()
    shutil.rmtree(self._tb_dir, ignore_errors=True)
    self._tb = summary_writer_class()(self._tb_dir)
    for row in read_metrics(os.path.dirname(self.path), filename=os.path.basename(self.path)):
      self._add_scalars(row)
    samples: dict[tuple[str, int], list] = {}  # the rollout text tables too
    for r in read_metrics(os.path.dirname(self.rollouts_path),
                          filename=os.path.basename(self.rollouts_path)):
      samples.setdefault((r.pop("stage"), r.pop("step")), []).append(r)
    for (stage, step), rows in samples.items():
      self._tb.add_text(f"{stage}/rollouts", _markdown_table(rows), step)
    self._tb.flush()

  def _add_scalars(self, row: Mapping[str, Any]) -> None:
    for k, v in row.items():
      if k in ("stage", "step", "time"):
        continue
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f"{row['stage']}/{k}", v, int(row["step"]))

  def drop_stage(self, stage: str) -> None:
    self.truncate(stage, -1)

  def write(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
    row.update({k: _jsonable(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      self._add_scalars(row)
    if self.wandb is not None:
      self.wandb.log_scalars(stage, step, row)

  def write_samples(self, stage: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rollout samples (one dict per CoT, the same keys in each) of `stage` at `step`: appended
    to rollouts.jsonl with the stage and step, to TensorBoard as a markdown table
    (`<stage>/rollouts`), to W&B as a table (`<stage>/rollouts`)."""
    if not self.enabled or not rows:
      return
    with open(self.rollouts_path, "a") as f:
      for r in rows:
        f.write(json.dumps({"stage": stage, "step": int(step),
                            **{k: _jsonable(v) for k, v in r.items()}}) + "\n")
    columns = list(rows[0])
    if self._tb is not None:
      self._tb.add_text(f"{stage}/rollouts", _markdown_table(rows), int(step))
    if self.wandb is not None:
      self.wandb.log_table(f"{stage}/rollouts", ["step"] + columns,
                           [[int(step)] + [_jsonable(r[c]) for c in columns] for r in rows])

  def write_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table for W&B only (the workdir has it already, e.g. results.json)."""
    if self.enabled and self.wandb is not None:
      self.wandb.log_table(key, columns, rows)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self.wandb is not None:
      self.wandb.finish()
      self.wandb = None


def _markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Rows of the same keys as a markdown table (floats to 3 decimals, one line per cell)."""
  columns = list(rows[0])
  cell = lambda v: (f"{v:.3f}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace(
      "\n", " ")
  return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
                   ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows])


def _truncate_jsonl(path: str, stage: str, after_step: int) -> bool:
  """Drops the rows of `stage` with step > after_step (and lines cut by a kill) from a JSONL
  file; False when there is no file."""
  if not os.path.exists(path):
    return False
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  kept = []
  for line in rows:
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a kill
    if r.get("stage") == stage and int(r.get("step", -1)) > after_step:
      continue
    kept.append(line if line.endswith("\n") else line + "\n")
  with open(path, "w") as f:
    f.writelines(kept)
  return True


def read_metrics(workdir: str, stage: str | None = None, *, filename: str = "metrics.jsonl"
                 ) -> list[dict[str, Any]]:
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill (truncate drops it on resume)
        if stage is None or r.get("stage") == stage:
          out.append(r)
  return out


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


# Seconds without a progress line after which a running loop says it is still working (a first
# compile, the first rollout of a large model); 0 turns it off. main sets it from log.heartbeat.
HEARTBEAT_SECS = 60.0


def set_heartbeat(seconds: float) -> None:
  global HEARTBEAT_SECS
  HEARTBEAT_SECS = float(seconds)


class Progress:
  """Logs `name step/total (pct) rate, elapsed, ETA | extra` every `every` steps, and, while a
  step runs for longer than `heartbeat` seconds (default HEARTBEAT_SECS) without a line, a
  "still running" line with the current `phase` every `heartbeat` seconds. Use it as a context
  manager (the heartbeat thread stops on exit, and after the last step).

  The rate excludes the first step after (re)start, which includes compilation.
  """

  def __init__(self, name: str, total: int, *, start: int = 0, every: int = 10, unit: str = "step",
               heartbeat: float | None = None):
    self.name, self.total, self.every, self.unit = name, int(total), max(int(every), 1), unit
    self.start = int(start)
    self.t0 = time.time()
    self._t_first = None
    self._n_first = None
    self.phase = ""  # what the running step is doing, for the heartbeat line
    self._step, self._t_step, self._t_line = self.start, self.t0, self.t0
    self._stop = threading.Event()
    secs = HEARTBEAT_SECS if heartbeat is None else float(heartbeat)
    self._thread = None
    if secs > 0:
      self._thread = threading.Thread(target=self._beat, args=(secs,), daemon=True,
                                      name=f"heartbeat:{name}")
      self._thread.start()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join()

  def _beat(self, secs: float) -> None:
    while not self._stop.wait(max(0.01, secs - (time.time() - self._t_line))):
      now = time.time()
      if now - self._t_line < secs:
        continue
      first = (f" (the first {self.unit} after a start includes compilation)"
               if self._t_first is None else "")
      logging.info("[%s] %s %d/%d still running after %s%s%s, elapsed %s", self.name, self.unit,
                   self._step + 1, self.total, format_duration(now - self._t_step),
                   f": {self.phase}" if self.phase else "", first, format_duration(now - self.t0))
      self._t_line = now

  def update(self, step: int, extra: str = "", force: bool = False) -> None:
    now = time.time()
    self._step, self._t_step = step, now
    if step >= self.total:
      self._stop.set()
    if self._t_first is None:
      self._t_first, self._n_first = now, step
    done = step - self._n_first
    rate = done / (now - self._t_first) if done > 0 and now > self._t_first else float("nan")
    if not (force or step == self.total or step % self.every == 0 or step == self.start + 1):
      return
    remaining = (self.total - step) / rate if rate and rate > 0 else float("nan")
    pct = 100.0 * step / max(self.total, 1)
    rate_s = (f"{1.0 / rate:.2f} s/{self.unit}" if rate and rate < 1 else
              f"{rate:.2f} {self.unit}/s") if math.isfinite(rate) else "-"
    msg = (f"[{self.name}] {step}/{self.total} ({pct:.0f}%) {rate_s}, elapsed "
           f"{format_duration(now - self.t0)}, ETA {format_duration(remaining)}")
    if extra:
      msg += " | " + extra
    logging.info(msg)
    self._t_line = now


def fmt_metrics(m: Mapping[str, Any], keys: tuple[str, ...]) -> str:
  parts = []
  for k in keys:
    if k in m:
      v = m[k]
      try:
        parts.append(f"{k}={float(v):.4g}")
      except (TypeError, ValueError):
        parts.append(f"{k}={v}")
  return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Evaluation summaries


def lookup(summary: Mapping[str, Any], name: str) -> float:
  """A metric of an evaluation summary by path, e.g. "avg/rail/pearson" or
  "splits/test/standard/kendall"."""
  node: Any = summary
  for part in name.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(f"metric {name!r} not found (no {part!r}); e.g. avg/rail/pearson")
    node = node[part]
  return float(node)


def eval_metrics(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
  """The scalars of a periodic evaluation written to metrics.jsonl (`prefix`: "val" or "avg")."""
  a = summary["avg"]
  return {f"{prefix}_rail_pearson": a["rail"]["pearson"],
          f"{prefix}_rail_spearman": a["rail"]["spearman"],
          f"{prefix}_rail_kendall": a["rail"]["kendall"],
          f"{prefix}_rail_mse": a["rail"]["mse"],
          f"{prefix}_standard_pearson": a["standard"]["pearson"],
          "invalid_frac": a["invalid_frac"]}


# ---------------------------------------------------------------------------------------------
# RL


@dataclasses.dataclass(frozen=True)
class RolloutStats:
  """Sums over the rows of one or more rollout rounds (add rounds with `+`)."""
  rows: float = 0.0
  groups: float = 0.0
  kept_groups: float = 0.0
  reward_sum: float = 0.0
  reward_sq: float = 0.0
  binary_sum: float = 0.0
  y_hat_sum: float = 0.0  # over the valid rows, as the next three
  y_hat_sq: float = 0.0
  abs_err_sum: float = 0.0
  score_mass_sum: float = 0.0
  valid: float = 0.0
  truncated: float = 0.0
  eos: float = 0.0
  length_sum: float = 0.0
  length_max: float = 0.0  # the longest CoT (tokens); `+` keeps the maximum
  gen_tokens: float = 0.0
  adv_abs_sum: float = 0.0
  adv_sum: float = 0.0
  signal_binary_groups: float = 0.0  # groups whose binary rewards are not all equal
  signal_regression_groups: float = 0.0  # ... whose regression rewards are not all equal
  entropy_sum: float = 0.0  # the policy's entropy (T = 1, nats) summed over the CoT tokens
  cot_tokens: float = 0.0  # CoT tokens (the entropy's denominator)

  def __add__(self, other: "RolloutStats") -> "RolloutStats":
    combine = lambda name, a, b: max(a, b) if name == "length_max" else a + b
    return RolloutStats(**{f.name: combine(f.name, getattr(self, f.name), getattr(other, f.name))
                           for f in dataclasses.fields(self)})


def rl_update_metrics(stats: RolloutStats, step_metrics: Sequence[Mapping[str, float]], *,
                      rounds: int, kept_prompts: int, t_rollout: float, t_scoring: float,
                      t_update: float) -> dict[str, float]:
  """The metrics row of one RL update: rollout statistics (means over rows, or over the valid
  rows for the score statistics), times, and the optimiser steps' metrics (their mean; "skipped"
  is the running count after the last step, "loss_first" the first step's loss)."""
  rows = max(stats.rows, 1.0)
  valid = max(stats.valid, 1.0)
  groups = max(stats.groups, 1.0)
  mean_r = stats.reward_sum / rows
  y_mean = stats.y_hat_sum / valid
  m = {
      "rounds": rounds, "prompts_kept": kept_prompts,
      "keep_rate": stats.kept_groups / groups,
      "reward_mean": mean_r,
      "reward_std": float(np.sqrt(max(stats.reward_sq / rows - mean_r ** 2, 0.0))),
      "binary_acc": stats.binary_sum / rows,
      "signal_binary": stats.signal_binary_groups / groups,
      "signal_regression": stats.signal_regression_groups / groups,
      "y_hat_mean": y_mean,
      "y_hat_std": float(np.sqrt(max(stats.y_hat_sq / valid - y_mean ** 2, 0.0))),
      "abs_err_rollout": stats.abs_err_sum / valid,
      "score_mass": stats.score_mass_sum / valid,
      "truncated_frac": stats.truncated / rows,
      "eos_before_delimiter_frac": stats.eos / rows,
      "response_len_mean": stats.length_sum / rows,
      "response_len_max": stats.length_max,
      "adv_abs_mean": stats.adv_abs_sum / rows,
      "adv_mean": stats.adv_sum / rows,
      "entropy": stats.entropy_sum / max(stats.cot_tokens, 1.0),
      "time_rollout": t_rollout, "time_scoring": t_scoring, "time_update": t_update,
      "gen_tokens_per_s": stats.gen_tokens / max(t_rollout, 1e-9),
      "optimizer_steps": len(step_metrics),
  }
  if step_metrics:
    for k in step_metrics[0]:
      if k == "skipped":
        m[k] = step_metrics[-1][k]
      else:
        m[k] = float(np.mean([s[k] for s in step_metrics]))
    m["loss_first"] = step_metrics[0]["loss"]
  return m
