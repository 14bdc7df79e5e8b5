"""Train state (a plain pytree), the AdamW optimizer, and their shardings.

The train state is a dict pytree, so steps stay pure functions of arrays:

  {"params": nnx.State, "opt_state": optax state, "step": int32[], "rng": uint32[2],
   "skipped": int32[]}

`skipped` counts optimiser steps whose loss or gradient was not finite (never applied).
Parameters that hold LoRA adapters (`nnx.LoRAParam`, `model.lora.rank` > 0) train only the
adapters: `split_trainable` separates them (the filter `nnx.LoRAParam`) from the frozen base,
the optimizer state is built from them alone, and the base passes through every step unchanged.
Parameters are sharded by the model's logical rules; the optimizer moments follow their
parameter's sharding (`optax.tree_map_params`); scalars are replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from real_jax import sharding as shd
from real_jax.models import param_shardings

__all__ = ["TrainState", "trainable_filter", "split_trainable", "merge_trainable", "SCHEDULES", "make_schedule", "make_optimizer", "optimizer_from_config",
    "state_shardings", "init_state", "abstract_state", "abstract_like"]

TrainState = dict[str, Any]


# Learning-rate decay after the warm-up: fn(peak lr, decay steps) -> optax schedule.
SCHEDULES = {
    "constant": lambda lr, n: optax.constant_schedule(lr),
    "cosine": lambda lr, n: optax.cosine_decay_schedule(lr, n),
    "linear": lambda lr, n: optax.linear_schedule(lr, 0.0, n),
}


def make_schedule(lr: float, steps: int, schedule: str = "constant",
                  warmup_steps: int = 0) -> optax.Schedule:
  """Learning-rate schedule: constant (authors' REAL), cosine or linear decay to 0 over `steps`,
  after an optional linear warm-up from 0."""
  steps = max(int(steps), 1)
  warmup_steps = min(int(warmup_steps), steps - 1) if steps > 1 else 0
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {tuple(SCHEDULES)}")
  main = SCHEDULES[schedule](lr, max(steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main],
                              [warmup_steps])


def make_optimizer(*, lr: float, steps: int, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.01, grad_clip: float = 1.0,
                   schedule: str = "constant", warmup_steps: int = 0
                   ) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW (PyTorch AdamW semantics: decay on every parameter)."""
  parts = []
  if grad_clip and grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(make_schedule(lr, steps, schedule, warmup_steps), b1=b1, b2=b2,
                           eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)


def optimizer_from_config(optim, *, lr: float | None = None, steps: int,
                          schedule: str | None = None, warmup_steps: int = -1
                          ) -> optax.GradientTransformation:
  """`make_optimizer` from a config's `optim` block (lr / schedule / LR warm-up per stage)."""
  return make_optimizer(lr=lr if lr else optim.lr, steps=steps, b1=optim.b1, b2=optim.b2,
                        eps=optim.eps, weight_decay=optim.weight_decay,
                        grad_clip=optim.grad_clip, schedule=schedule or optim.schedule,
                        warmup_steps=optim.warmup_steps if warmup_steps < 0 else warmup_steps)


def trainable_filter(params: Any):
  """What trains: `nnx.LoRAParam` when the parameters hold LoRA adapters (the rest is the
  frozen base), else `nnx.Param` (every parameter)."""
  is_var = lambda x: isinstance(x, nnx.Variable)
  if any(isinstance(v, nnx.LoRAParam) for v in jax.tree.leaves(params, is_leaf=is_var)):
    return nnx.LoRAParam
  return nnx.Param


def split_trainable(params: Any) -> tuple[Any, Any]:
  """(trainable, frozen): the adapters and the frozen base of a LoRA model, else (params,
  None)."""
  if not isinstance(params, nnx.State) or trainable_filter(params) is nnx.Param:
    return params, None
  return nnx.split_state(params, nnx.LoRAParam, ...)


def merge_trainable(trainable: Any, frozen: Any) -> Any:
  """The full parameters from `split_trainable`'s parts."""
  return trainable if frozen is None else nnx.merge_state(trainable, frozen)


def _is_sds(x) -> bool:
  return isinstance(x, jax.ShapeDtypeStruct)


def state_shardings(params: Any, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """NamedShardings for every leaf of the train state."""
  p_shard = param_shardings(params, mesh)
  rep = shd.replicated(mesh)
  trainable, _ = split_trainable(params)
  abstract_opt = jax.eval_shape(tx.init, trainable)
  o_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, split_trainable(p_shard)[0],
                                  transform_non_params=lambda _: rep, is_leaf=_is_sds)
  return {"params": p_shard, "opt_state": o_shard, "step": rep, "rng": rep, "skipped": rep}


def init_state(params: Any, tx: optax.GradientTransformation, mesh: Mesh, seed: int
               ) -> tuple[TrainState, TrainState]:
  """(train state, its shardings). The optimizer state is created directly in its shardings."""
  shardings = state_shardings(params, tx, mesh)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(split_trainable(params)[0])
  rep = shd.replicated(mesh)
  state = {
      "params": params,
      "opt_state": opt_state,
      "step": shd.put_global(np.zeros((), np.int32), rep),
      "rng": shd.put_global(jax.random.PRNGKey(seed), rep),
      "skipped": shd.put_global(np.zeros((), np.int32), rep),
  }
  return state, shardings


def abstract_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """ShapeDtypeStructs of the train state `init_state` builds (a checkpoint restore target)."""
  sds = jax.ShapeDtypeStruct
  return {"params": jax.tree.map(lambda x: sds(x.shape, x.dtype), params),
          "opt_state": jax.eval_shape(tx.init, split_trainable(params)[0]),
          "step": sds((), jnp.int32), "rng": sds((2,), jnp.uint32), "skipped": sds((), jnp.int32)}


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, e.g. a restore target."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)
