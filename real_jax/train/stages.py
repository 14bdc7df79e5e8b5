"""The stages a method is made of: one function per stage name of the method table.

A stage function `fn(run, evaluate, carry, final) -> None` reads the run (`train.runner.Run`)
and the `Carry` the previous stage left, trains through `run.runner` (resume, checkpoints,
periodic evaluation), and leaves its parameters in the carry; `final` says it is the run's last
stage (the one periodic evaluation and the best checkpoint follow). `register_stage(name)` adds the
function of a stage whose spec (`methods.Stage`: budget, batch, sequences) is in
`methods.STAGES`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from real_jax import sharding as shd
from real_jax.registry import Registry
from real_jax.train import methods as methods_lib
from real_jax.train import pretrain, tract
from real_jax.train.config_schema import get_field
from real_jax.train.methods import WARMUP_STAGE
from real_jax.train.rl import run_rl
from real_jax.train.runner import Run
from real_jax.train import supervised
from real_jax.train.supervised import run_supervised

__all__ = ["Carry", "StageFn", "STAGE_FNS", "register_stage", "stage_steps", "has_row",
           "initial_label"]

# evaluate(params, *, name, tag, readout=None, checkpoint, training) -> summary (Evaluator.__call__)
Evaluate = Callable[..., Any]


@dataclasses.dataclass
class Carry:
  """What a stage hands to the next: the current parameters, the model later stages start from
  (the initial or warm-up model) and its description, and TRACT's self-CoTs."""
  params: Any
  base: Any
  base_label: str
  selfcot: dict | None = None


StageFn = Callable[[Run, Evaluate, Carry, bool], None]


STAGE_FNS = Registry("stage function")


def register_stage(name: str) -> Callable[[StageFn], StageFn]:
  """Registers the function of stage `name` (a decorator); its spec must be in
  `methods.STAGES`."""
  methods_lib.STAGES.lookup(name)
  return STAGE_FNS.register(name)


def stage_steps(config, stage: str) -> int:
  """The step budget of `stage` under `config` (the first non-zero field of its spec)."""
  for field in methods_lib.STAGES.lookup(stage).steps:
    v = int(get_field(config, field))
    if v:
      return v
  return 0


def _loss(stage: str) -> str:
  """The supervised loss of `stage`, from its spec (`methods.Stage.loss`)."""
  return methods_lib.STAGES.lookup(stage).loss


def has_row(workdir: str, name: str) -> bool:
  """Whether results.json already has row `name` (a resumed run skips that evaluation); process
  0 decides for every process."""
  path = os.path.join(workdir, "results.json")
  has = False
  if shd.is_main_process() and os.path.exists(path):
    with open(path) as f:
      has = any(r["name"] == name for r in json.load(f).get("rows", []))
  return shd.agree(has)


def initial_label(config) -> str:
  """Which parameters a run starts from (or method=eval evaluates)."""
  if config.init.checkpoint:
    which = ("its best checkpoint by the validation split" if config.init.best
             else "its last checkpoint")
    return f"{config.init.checkpoint} ({config.init.stage or 'last stage'}, {which})"
  if config.model.hf_dir:
    return f"Hugging Face weights {config.model.hf_dir}"
  return f"random init ({config.model.preset}, seed {config.seed})"


WARMUP_ROW = "warm-up (SFT)"


@register_stage(WARMUP_STAGE)
def _warmup(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  c = run.config
  carry.params = run_supervised(
      run, WARMUP_STAGE, carry.params, kind=_loss(WARMUP_STAGE), steps=c.warmup.steps,
      batch_size=c.warmup.batch_size, micro_batch_size=c.warmup.micro_batch_size,
      lr=c.warmup.lr, schedule=c.warmup.schedule, lr_warmup=c.warmup.lr_warmup, main=final,
      make_source=_replay(run, WARMUP_STAGE, c.warmup.batch_size))
  carry.base = carry.params
  carry.base_label = f"the warm-up model (warmup stage step {c.warmup.steps})"
  if run.settings.evaluations.after_warmup and not final and not has_row(run.workdir,
                                                                          WARMUP_ROW):
    evaluate(carry.params, name=WARMUP_ROW, tag="warmup", readout="cot",
             checkpoint=f"warmup stage, last step ({c.warmup.steps})",
             training=f"SFT on demonstrations, {c.warmup.steps} steps from "
                      f"{initial_label(c)}")


def _replay(run: Run, stage: str, batch_size: int):
  """The batches of an SFT stage with `warmup.replay_every` (None: the records alone)."""
  c = run.config
  if not c.warmup.replay_every:
    return None
  return lambda seed: pretrain.ReplayBatches(
      supervised.RecordBatches(run, _loss(stage), batch_size, seed, shuffle=c.train.shuffle),
      pretrain.CorpusBatches(run, c.pretrain.batch_size, c.pretrain.seq_len, seed=seed + 1),
      c.warmup.replay_every)


def _supervised(kind: str) -> StageFn:
  def stage(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
    c = run.config
    carry.params = run_supervised(
        run, kind, carry.params, kind=_loss(kind), steps=c.train.steps,
        batch_size=c.train.batch_size, micro_batch_size=c.train.micro_batch_size, lr=c.train.lr,
        main=final, make_source=_replay(run, kind, c.train.batch_size) if kind == "sft" else None)
  return stage


register_stage("sft")(_supervised("sft"))
register_stage("raft")(_supervised("raft"))


@register_stage("tract1")
def _tract1(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  c = run.config
  carry.params = run_supervised(
      run, "tract1", carry.base, kind=_loss("tract1"), steps=stage_steps(c, "tract1"),
      batch_size=c.train.batch_size, micro_batch_size=c.train.micro_batch_size, lr=c.train.lr,
      copy_params=True)


@register_stage("tract_gen")
def _tract_gen(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  carry.selfcot = tract.run_tract_gen(run, carry.params)


@register_stage("tract2")
def _tract2(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  c = run.config
  carry.params = None  # stage 1's model is not needed any more
  selfcot = carry.selfcot
  carry.params = run_supervised(
      run, "tract2", carry.base, kind=_loss("tract2"), steps=stage_steps(c, "tract2"),
      batch_size=c.train.batch_size, micro_batch_size=c.train.micro_batch_size, lr=c.train.lr,
      main=final,
      make_source=lambda seed: tract.SelfCotBatches(run, selfcot, c.train.batch_size, seed))


@register_stage("rl")
def _rl(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  carry.params = run_rl(run, carry.params, main=final)


@register_stage("pretrain")
def _pretrain(run: Run, evaluate: Evaluate, carry: Carry, final: bool) -> None:
  pretrain.run_pretrain(run, carry.params)
  print(f"export the base with python -m real_jax.tools.export_hf --workdir {run.workdir} "
        "--out DIR")
