"""Orbax checkpoints of the train state, the RNG and the data position, for exact resume.

Layout of a run's workdir::

  ckpt/<stage>/<step>/{params,opt_state,scalars,meta}   CheckpointManager per stage (async)
  ckpt/<stage>_best/<step>/{params,meta}                best-by-eval parameters (max_to_keep=1)

`params`, `opt_state` and `scalars` (step, rng, skipped) are pytrees of (sharded) arrays saved
with `StandardSave` and restored into abstract targets that carry the wanted shardings (so a
restore can also reshard); `meta` is JSON: the data iterator position, the RL buffer state, the
best eval value so far, and anything else the loop needs to continue exactly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from real_jax.train.state import abstract_like

ITEMS = ("params", "opt_state", "scalars", "meta")


class Checkpointer:
  """A `CheckpointManager` over the train state of one stage."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True,
               items: tuple[str, ...] = ITEMS):
    self.directory = os.path.abspath(directory)
    self.items = items
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, item_names=items, options=options)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
           *, params: Any = None, force: bool = True) -> bool:
    """Saves (asynchronously) the train state (or just `params`) and the JSON `meta`."""
    args = {}
    if state is not None:
      args["params"] = ocp.args.StandardSave(state["params"])
      args["opt_state"] = ocp.args.StandardSave(state["opt_state"])
      args["scalars"] = ocp.args.StandardSave(
          {k: state[k] for k in ("step", "rng", "skipped")})
    elif params is not None:
      args["params"] = ocp.args.StandardSave(params)
    args["meta"] = ocp.args.JsonSave(dict(meta or {}))
    return self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, target_state: dict[str, Any], shardings: Any | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores (state, meta) at `step` into the structure/shardings of `target_state`."""
    abstract = abstract_like(target_state, shardings)
    out = self._mngr.restore(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract["params"]),
        opt_state=ocp.args.StandardRestore(abstract["opt_state"]),
        scalars=ocp.args.StandardRestore({k: abstract[k] for k in ("step", "rng", "skipped")}),
        meta=ocp.args.JsonRestore()))
    state = {"params": out["params"], "opt_state": out["opt_state"], **out["scalars"]}
    return state, dict(out["meta"])

  def restore_params(self, step: int, target_params: Any, shardings: Any | None = None) -> Any:
    abstract = abstract_like(target_params, shardings)
    out = self._mngr.restore(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))
    return out["params"]

  def restore_meta(self, step: int) -> dict[str, Any]:
    out = self._mngr.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def stage_dir(workdir: str, stage: str, best: bool = False) -> str:
  return os.path.join(workdir, "ckpt", stage + ("_best" if best else ""))


def find_params_checkpoint(path: str, stage: str = "", best: bool = False
                           ) -> tuple[str, int]:
  """(checkpoint manager dir, step) for a workdir or a stage checkpoint dir.

  `path` may be a run's workdir (its last stage, or `stage`), `<workdir>/ckpt/<stage>`, or a
  step directory `<...>/<step>`. Raises FileNotFoundError saying what was looked for.
  """
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
    return os.path.dirname(path), int(base)
  candidates = []
  if os.path.isdir(os.path.join(path, "ckpt")):
    ckpt = os.path.join(path, "ckpt")
    if stage:
      candidates = [os.path.join(ckpt, stage + ("_best" if best else ""))]
    else:
      order = _stage_order(path)
      names = [s + ("_best" if best else "") for s in order]
      candidates = [os.path.join(ckpt, n) for n in reversed(names)]
  else:
    candidates = [path]
  for c in candidates:
    steps = _steps(c)
    if steps:
      return c, max(steps)
  raise FileNotFoundError(f"no parameter checkpoint found under {path} (looked in "
                          f"{candidates}); pass a run's workdir or <workdir>/ckpt/<stage>")


def _steps(d: str) -> list[int]:
  if not os.path.isdir(d):
    return []
  return [int(n) for n in os.listdir(d)
          if n.isdigit() and os.path.isdir(os.path.join(d, n, "params"))]


def _stage_order(workdir: str) -> list[str]:
  """Stages of a workdir in run order (from its run.json), else by modification time."""
  info = os.path.join(workdir, "run.json")
  if os.path.exists(info):
    with open(info) as f:
      stages = json.load(f).get("stages", [])
    if stages:
      return [s for s in stages if s != "tract_gen"]
  ckpt = os.path.join(workdir, "ckpt")
  names = [n for n in os.listdir(ckpt) if not n.endswith("_best")]
  return sorted(names, key=lambda n: os.path.getmtime(os.path.join(ckpt, n)))
