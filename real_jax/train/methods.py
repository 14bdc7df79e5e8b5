"""The method table: what `config.method` names, in one place.

A method is one `Method` entry: its name, the row label of its results, its stages, the RL
defaults when it is an RL method, how evaluation reads its models, and whether it reads judge
data and is judged at all. Each stage is a `Stage` spec here (its step budget, the batch its
step splits over the mesh, the sequences it builds) and a function in `train.stages`. The
config schema (choices, `--help`), validation, `settings.resolve`, `main` and the stage runner
read these tables, so adding a method is one `register_method(Method(...))`, plus, for a stage
no other method has, its `Stage` spec and its step function (`stages.register_stage`).
`tests/test_main.py` adds a toy method that way and runs it.

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
from typing import Any, Callable

from real_jax.registry import Registry

__all__ = ["Stage", "STAGES", "register_stage_spec", "RLDefaults", "Method", "METHODS",
           "register_method", "get_method", "stages_for", "WARMUP_STAGE"]

WARMUP_STAGE = "warmup"


@dataclasses.dataclass(frozen=True)
class Stage:
  """What the config checks and the reports need to know about a stage (its function is in
  `train.stages`)."""
  name: str
  steps: tuple[str, ...] = ()  # config fields of its step budget; the first non-zero one wins
  # (batch size field, micro-batch size field or ""): the rows of its step, split over the
  # mesh's data x fsdp axes (validation checks that they divide)
  batch: tuple[str, str] | None = None
  targets: bool = False  # builds prompt + target rows (data.max_target_len counts in the context)
  loss: str = ""  # a supervised stage's loss (train.supervised.objective_for): sft | raft | tract


STAGES = Registry("stage")


def register_stage_spec(stage: Stage) -> Stage:
  return STAGES.register(stage.name)(stage)


for _s in (
    Stage(WARMUP_STAGE, ("warmup.steps",), ("warmup.batch_size", "warmup.micro_batch_size"),
          targets=True, loss="sft"),
    Stage("sft", ("train.steps",), ("train.batch_size", "train.micro_batch_size"), targets=True,
          loss="sft"),
    Stage("raft", ("train.steps",), ("train.batch_size", "train.micro_batch_size"), loss="raft"),
    Stage("tract1", ("tract.stage1_steps", "train.steps"),
          ("train.batch_size", "train.micro_batch_size"), targets=True, loss="tract"),
    Stage("tract_gen"),
    Stage("tract2", ("tract.stage2_steps", "train.steps"),
          ("train.batch_size", "train.micro_batch_size"), targets=True, loss="tract"),
    Stage("rl", ("rl.steps",), ("rl.mini_batch_size", "rl.micro_batch_size")),
    Stage("pretrain", ("pretrain.steps",), ("pretrain.batch_size", "")),
):
  register_stage_spec(_s)


@dataclasses.dataclass(frozen=True)
class RLDefaults:
  """What an RL method uses where the config's `rl.*` field is "" (the method's default)."""
  reward: str  # a registry.REWARDS name (rl.reward)
  advantage: str  # an objectives.ADVANTAGE_RECIPES name (rl.advantage)
  policy_loss: str  # a registry.POLICY_LOSSES name (rl.policy_loss)
  objective: str  # the train step's loss, a name in train.rl.RL_OBJECTIVES: "real" | "grpo"
  score_in_action: bool  # the sampled score token is part of the action (standard RL)


@dataclasses.dataclass(frozen=True)
class Method:
  """One entry of the method table."""
  name: str
  label: str  # the results row of its final model
  stages: tuple[str, ...]  # its own stages (names in STAGES), in order
  doc: str = ""  # one line for `--help`
  warmup: bool = True  # config.warmup.steps > 0 puts a warm-up SFT stage first
  readout: str = "cot"  # how evaluation reads its models: "cot" (sample a CoT) | "direct"
  judge_data: bool = True  # trains on and is evaluated on judge records (False: the base)
  evaluates_only: bool = False  # no training: the final evaluation always runs (method=eval)
  final_tag: str = "final"  # the eval/<tag>.json of its final model
  rl: RLDefaults | None = None  # an RL method (the rl stage reads these defaults)
  # Extra rules of the method: config -> the error message, or "" when the config is fine.
  check: Callable[[Any], str] | None = None


METHODS = Registry("method")


def register_method(method: Method) -> Method:
  """Adds `method` to the table (a name registers once; its stages must have specs)."""
  missing = [s for s in method.stages if s not in STAGES]
  if missing:
    raise ValueError(f"method {method.name!r}: stages {missing} have no Stage spec "
                     "(register_stage_spec)")
  return METHODS.register(method.name)(method)


def get_method(name: str) -> Method:
  return METHODS.lookup(name)


def stages_for(config: Any) -> list[str]:
  """The ordered stages of a run (each resumable on its own): an optional warm-up, then the
  method's own."""
  m = get_method(config.method)
  pre = [WARMUP_STAGE] if m.warmup and config.warmup.steps > 0 else []
  return pre + list(m.stages)


def _pretrain_check(config) -> str:
  if config.data.name not in ("synthetic", "synthetic_judge"):
    return (f"method=pretrain builds the synthetic task's base model; it needs "
            f"data.name=synthetic (got {config.data.name!r})")
  if config.pretrain.steps <= 0 or config.pretrain.seq_len < 2:
    return "method=pretrain needs config.pretrain.steps > 0 and config.pretrain.seq_len >= 2"
  return ""


def _eval_check(config) -> str:
  if not (config.init.checkpoint or config.model.hf_dir):
    return (f"method={config.method} needs config.init.checkpoint (a workdir or checkpoint dir) "
            "or config.model.hf_dir (a Hugging Face directory)")
  return ""


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
                       final_tag="eval", check=_eval_check,
                       doc="evaluate config.init.checkpoint (a workdir / checkpoint) or "
                           "config.model.hf_dir"))
register_method(Method("pretrain", "synthetic base", ("pretrain",), warmup=False,
                       judge_data=False, check=_pretrain_check,
                       doc="the synthetic task's base model: next-token training on its corpus, "
                           "then knowledge probes; no judge evaluation"))
