"""The method table: what `config.method` names, in one place.

A method is one `Method` entry: its name, the row label of its results, its stages (each a
function in `train.stages.STAGES`), the RL defaults when it is an RL method, how evaluation
reads its models, and whether it is evaluated at all. The config schema (choices, `--help`),
validation, `settings.resolve`, `main` and the stage runner read this table, so adding a
method is one `register_method(Method(...))` plus the step function of any new stage
(`stages.register_stage`); `tests/test_main.py` adds a toy method that way and runs it.

| method | stages (after an optional warm-up) | trains |
|---|---|---|
| sft | sft | cross-entropy on the demonstrations |
| raft | raft | squared error of y_hat read right after prompt + delimiter (no CoT) |
| tract | tract1, tract_gen, tract2 | CoT-RAFT, self-CoTs, CoT-RAFT again from the base |
| grpo | rl | standard RL: binary reward, the GRPO recipe, PPO |
| real | rl | REAL: regression reward, the authors' recipe, REINFORCE + beta * refinement |
| eval | (none) | nothing: evaluates config.init.checkpoint or config.model.hf_dir |
| pretrain | pretrain | the synthetic base: next-token training on its corpus |
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RLDefaults", "Method", "METHODS", "register_method", "get_method", "stages_for",
           "WARMUP_STAGE"]

WARMUP_STAGE = "warmup"


@dataclasses.dataclass(frozen=True)
class RLDefaults:
  """What an RL method uses where the config's `rl.*` field is "" (the method's default)."""
  reward: str  # a registry.REWARDS name (rl.reward)
  advantage: str  # an objectives.ADVANTAGE_RECIPES name (rl.advantage)
  policy_loss: str  # a registry.POLICY_LOSSES name (rl.policy_loss)
  objective: str  # the train step's loss: "real" (policy gradient + beta * refinement) | "grpo"
  score_in_action: bool  # the sampled score token is part of the action (standard RL)


@dataclasses.dataclass(frozen=True)
class Method:
  """One entry of the method table."""
  name: str
  label: str  # the results row of its final model
  stages: tuple[str, ...]  # its own stages, in order (a warm-up stage may come first)
  doc: str = ""  # one line for `--help`
  warmup: bool = True  # config.warmup.steps > 0 puts a warm-up SFT stage first
  readout: str = "cot"  # how evaluation reads its models: "cot" (sample a CoT) | "direct"
  evaluated: bool = True  # False: no judge evaluation at all (the synthetic base)
  evaluates_only: bool = False  # no training: the final evaluation always runs (method=eval)
  rl: RLDefaults | None = None  # an RL method (the rl stage reads these defaults)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Adds `method` to the table (a name registers once)."""
  if method.name in METHODS:
    raise ValueError(f"method {method.name!r} is already registered")
  METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}") from None


def stages_for(config: Any) -> list[str]:
  """The ordered stages of a run (each resumable on its own): an optional warm-up, then the
  method's own."""
  m = get_method(config.method)
  pre = [WARMUP_STAGE] if m.warmup and config.warmup.steps > 0 else []
  return pre + list(m.stages)


register_method(Method("sft", "SFT", ("sft",),
                       doc="cross-entropy on demonstration CoT + score (\"warm-up\")"))
register_method(Method("raft", "RAFT", ("raft",), readout="direct",
                       doc="squared error of y_hat read right after prompt + delimiter (no CoT)"))
register_method(Method("tract", "TRACT (CoT-RAFT)", ("tract1", "tract_gen", "tract2"),
                       doc="CoT-RAFT on demonstrations -> one self-CoT per training prompt -> "
                           "CoT-RAFT on them, retrained from the base model"))
register_method(Method("grpo", "standard RL (GRPO)", ("rl",),
                       doc="standard RL with the binary reward (sampled score == label)",
                       rl=RLDefaults(reward="binary", advantage="grpo", policy_loss="ppo",
                                     objective="grpo", score_in_action=True)))
register_method(Method("real", "REAL", ("rl",),
                       doc="REAL: regression reward, generalized policy gradient",
                       rl=RLDefaults(reward="regression", advantage="authors",
                                     policy_loss="reinforce", objective="real",
                                     score_in_action=False)))
register_method(Method("eval", "evaluated model", (), warmup=False, evaluates_only=True,
                       doc="evaluate config.init.checkpoint (a workdir / checkpoint) or "
                           "config.model.hf_dir"))
register_method(Method("pretrain", "synthetic base", ("pretrain",), warmup=False,
                       evaluated=False,
                       doc="the synthetic task's base model: next-token training on its corpus, "
                           "then knowledge probes; no judge evaluation"))
