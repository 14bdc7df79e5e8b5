"""Orbax checkpoints of the train state, the RNG and the data position, for exact resume.

Layout of a run's workdir::

  ckpt/<stage>/<step>/{params,opt_state,scalars,meta}   CheckpointManager per stage (async)
  ckpt/<stage>_best/<step>/{params,meta}                best-by-eval parameters (max_to_keep=1)

`params`, `opt_state` and `scalars` (step, rng, skipped) are pytrees of (sharded) arrays saved
with `StandardSave` and restored into abstract targets that carry the wanted shardings (so a
restore can also reshard); `meta` is JSON: the data iterator position, the RL buffer state, the
best eval value so far, and anything else the loop needs to continue exactly.

A step is visible only when complete: orbax writes it under a temporary name and renames it when
every item is written, and `latest_step` / `find_params_checkpoint` list only finished steps.
`Checkpointer.restore_newest` fails over: a step that cannot be read gets one line and the
previous step is tried; the run that owns the workdir moves the bad step to
`<stage>.unreadable/` (never deleted), readers of another run leave it in place. With no
readable step left it raises `NoRestorableCheckpoint` naming the directory.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, TypeVar

import orbax.checkpoint as ocp
from absl import logging

from real_jax import sharding as shd
from real_jax.train.state import abstract_like

__all__ = ["ITEMS", "T", "NoRestorableCheckpoint", "unreadable_dir", "move_aside", "Checkpointer",
    "restore_run_params", "stage_dir", "find_params_checkpoint"]

ITEMS = ("params", "opt_state", "scalars", "meta")
T = TypeVar("T")


class NoRestorableCheckpoint(RuntimeError):
  """A stage's checkpoints exist but none of them can be read."""


def unreadable_dir(directory: str) -> str:
  """Where the unreadable steps of a checkpoint directory are moved: `<directory>.unreadable`."""
  return os.path.abspath(directory).rstrip("/") + ".unreadable"


def move_aside(directory: str, step: int) -> str:
  """Moves step `step` of `directory` to `unreadable_dir(directory)/<step>-<time>`; returns it."""
  dst = os.path.join(unreadable_dir(directory), f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  os.rename(os.path.join(directory, str(step)), dst)
  return dst


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return f"{type(e).__name__}: {text[:200]}"


class Checkpointer:
  """A `CheckpointManager` over the train state of one stage."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True,
               items: tuple[str, ...] = ITEMS):
    self.directory = os.path.abspath(directory)
    self.items = items
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, item_names=items, options=self._options)

  def restore_newest(self, restore: Callable[[int], T], *, move_aside_unreadable: bool = True
                     ) -> tuple[int, T] | None:
    """`(step, restore(step))` for the newest step that `restore` can read, or None when the
    directory has no step (and, when moving aside, never had an unreadable one).

    An unreadable step gets one warning line and the previous step is tried. The run that owns
    the directory (`move_aside_unreadable`; process 0 only) moves it to `<dir>.unreadable/`, so
    that the run continues from the step it restored; readers of another run's workdir (`Judge`,
    `export_hf`, `init.checkpoint`) leave it in place. Raises NoRestorableCheckpoint when steps
    exist but none can be read, or when only moved-aside steps are left (restarting the stage
    from scratch is then the user's decision).
    """
    tried = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        found = step, restore(step)
      except (KeyboardInterrupt, SystemExit):
        raise
      except Exception as e:  # noqa: BLE001 - any unreadable step fails over the same way
        tried.append(step)
        where = "left in place"
        if move_aside_unreadable and shd.is_main_process():
          try:
            where = f"moved to {move_aside(self.directory, step)}"
          except OSError as oe:
            where = f"could not be moved aside ({oe.strerror})"
        logging.warning("checkpoint %s step %d is unreadable (%s); %s; trying the previous step",
                        self.directory, step, _one_line(e), where)
        continue
      if tried:  # the manager's cached step list still names the unreadable steps
        self._mngr.close()
        self._mngr = ocp.CheckpointManager(self.directory, item_names=self.items,
                                           options=self._options)
      return found
    moved = unreadable_dir(self.directory)
    if tried or (move_aside_unreadable and os.path.isdir(moved) and os.listdir(moved)):
      raise NoRestorableCheckpoint(
          f"no readable checkpoint in {self.directory} (steps tried: {tried or 'none left'}; "
          f"unreadable steps moved aside are in {moved}); to restart this stage from scratch, "
          f"remove {moved} and the stage's directory; to resume, copy a readable step back")
    return None

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


def restore_run_params(path: str, abstract: Any, shardings: Any | None = None, *,
                       stage: str = "", best: bool = False) -> tuple[str, int, Any]:
  """(checkpoint dir, step, params) of a run's newest readable parameters (`find_params_checkpoint`
  picks the directory; `Checkpointer.restore_newest` fails over to older steps)."""
  d, step = find_params_checkpoint(path, stage, best)
  ck = Checkpointer(d, async_save=False, items=("params", "meta") if d.endswith("_best")
                    else ITEMS)
  try:
    if os.path.abspath(path).rstrip("/") == os.path.join(d, str(step)):  # a step dir: that step
      return d, step, ck.restore_params(step, abstract, shardings)
    found = ck.restore_newest(lambda s: ck.restore_params(s, abstract, shardings),
                              move_aside_unreadable=False)
  finally:
    ck.close()
  if found is None:
    raise FileNotFoundError(f"no parameter checkpoint left in {d}")
  return d, found[0], found[1]


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
