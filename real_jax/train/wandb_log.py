"""Weights & Biases logging beside metrics.jsonl and TensorBoard (`log.wandb.*`, optional).

`WandbLogger` opens one W&B run per workdir (its id is kept in `<workdir>/wandb_id`, so a
resumed run continues the same W&B run) under `<workdir>/wandb/`, with the resolved config. It
receives what `MetricsWriter` writes: every scalar as `<stage>/<name>` against the stage's own
step (`<stage>/step`, declared with `define_metric`, so W&B draws each stage's curves on its
own axis), tables (the rollout samples, the results table) as `wandb.Table`; W&B draws the training
curves from the scalars. A resumed run logs the steps after its checkpoint again, as
metrics.jsonl does; W&B keeps both copies.

`mode="offline"` writes the run to disk only (no key, no network); `wandb sync
<workdir>/wandb/offline-run-*` uploads it later. tests/test_tracking.py reads an offline run's
`.wandb` record stream back.
"""

from __future__ import annotations

import math
import os
import secrets
import string
from typing import Any, Mapping, Sequence

__all__ = ["MODES", "WandbLogger"]

MODES = ("offline", "online", "disabled")


class WandbLogger:
  """One W&B run: scalars per stage step, tables, the config; `finish()` at the end."""

  def __init__(self, workdir: str, *, project: str, entity: str = "", mode: str = "offline",
               name: str = "", config: Mapping[str, Any] | None = None):
    try:
      import wandb  # noqa: PLC0415 - optional dependency: pip install -e ".[wandb]"
    except ImportError as e:
      raise ImportError("config.log.wandb.project is set but wandb is not installed: pip "
                        "install -e \".[wandb]\" (or leave log.wandb.project empty)") from e
    self._wandb = wandb
    id_path = os.path.join(workdir, "wandb_id")
    if os.path.exists(id_path):
      with open(id_path) as f:
        run_id = f.read().strip()
    else:
      run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
      with open(id_path, "w") as f:
        f.write(run_id + "\n")
    self.run = wandb.init(project=project, entity=entity or None, mode=mode, dir=workdir,
                          name=name or os.path.basename(os.path.abspath(workdir)),
                          config=dict(config or {}), id=run_id, resume="allow",
                          settings=wandb.Settings(silent=True, disable_git=True,
                                                  save_code=False))
    self._stages: set[str] = set()

  def log_scalars(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Every finite number of `metrics` as `<stage>/<name>` at `<stage>/step` = step."""
    if stage not in self._stages:
      self.run.define_metric(f"{stage}/step")
      self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
      self._stages.add(stage)
    row = {f"{stage}/{k}": float(v) for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    row[f"{stage}/step"] = int(step)
    self.run.log(row)

  def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table under `key` (e.g. "rl/rollouts", "results")."""
    self.run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

  def finish(self) -> None:
    self.run.finish()
