"""The run's settings resolved once from its config: the method's entry, its stages, which
evaluations run, and the RL settings with the method's defaults filled in. `main.setup`
computes a `RunSettings` once (`resolve`) and every stage reads it from the `Run`.

Also: the model the config describes (`preset_model`, `model_overrides`) and when REAL's
estimator is exactly -grad J (`exactness_gaps`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from real_jax import layout
from real_jax import objectives as obj
from real_jax.models import attention as attention_lib
from real_jax.models import qwen3
from real_jax.models.presets import get_preset
from real_jax.train import methods as methods_lib
from real_jax.train.config_schema import INVALID_RULES, ConfigDict, ConfigError

__all__ = ["AdvantageSettings", "RLSettings", "Evaluations", "RunSettings", "advantage_recipe",
           "rl_settings", "evaluations", "resolve", "attention_backend", "model_overrides", "lora_fields",
           "preset_model",
           "EXACT_OVERRIDES", "exactness_gaps", "prompt_buckets"]


@dataclasses.dataclass(frozen=True)
class AdvantageSettings:
  """Rewards and group advantages of a rollout (defaults: the authors' REAL recipe)."""
  reward: str = "regression"  # a registry.REWARDS name: regression (REAL) | binary (standard RL)
  shaping: str = "prob"  # a registry.SHAPINGS name
  shaping_weight: float = 1.0
  recipe: obj.AdvantageRecipe = obj.ADVANTAGE_RECIPES["authors"]
  invalid: str = "penalize"  # one of config_schema.INVALID_RULES
  format_penalty: float = 25.0  # objectives.worst_squared_error of scores 1..5, full vocabulary

  def __post_init__(self):
    if self.invalid not in INVALID_RULES:
      raise ValueError(f"invalid={self.invalid!r} is not one of {INVALID_RULES}")

  @classmethod
  def from_recipe(cls, recipe: str, **kw) -> "AdvantageSettings":
    """Settings of a named recipe in `objectives.ADVANTAGE_RECIPES` ("authors", "grpo", "rloo")."""
    return cls(recipe=obj.ADVANTAGE_RECIPES[recipe], **kw)

  def describe(self) -> str:
    return self.recipe.describe()


@dataclasses.dataclass(frozen=True)
class RLSettings:
  """What an RL run uses, the method's defaults resolved; `label` describes it for results."""
  defaults: methods_lib.RLDefaults
  advantages: AdvantageSettings
  recipe_name: str  # an objectives.ADVANTAGE_RECIPES name, or "custom"
  policy_loss: str
  label: str


def advantage_recipe(config: ConfigDict, defaults: methods_lib.RLDefaults
                     ) -> tuple[str, obj.AdvantageRecipe]:
  """(recipe name, its settings): `rl.advantage`, "" = the method's default; "custom" reads
  `rl.estimator`, `rl.normalize`, `rl.clip`."""
  rl = config.rl
  name = rl.advantage or defaults.advantage
  if name == "custom":
    return name, obj.AdvantageRecipe(rl.estimator, normalize=bool(rl.normalize),
                                     clip=rl.clip or None)
  return name, obj.ADVANTAGE_RECIPES[name]


def rl_settings(config: ConfigDict, score_values: Sequence[float],
                method: str | None = None) -> RLSettings:
  """The RL settings of the config's method, or of `method` (an RL method of the table) with
  the config's `rl` block."""
  method = method or config.method
  defaults = methods_lib.get_method(method).rl
  if defaults is None:
    raise ValueError(f"method {method!r} is not an RL method")
  rl = config.rl
  recipe_name, recipe = advantage_recipe(config, defaults)
  penalty = (obj.worst_squared_error(score_values, renormalize=bool(rl.renormalize))
             if rl.format_penalty == -1.0 else float(rl.format_penalty))
  advantages = AdvantageSettings(reward=rl.reward or defaults.reward, shaping=rl.shaping,
                                 shaping_weight=rl.shaping_weight, recipe=recipe,
                                 invalid=rl.invalid, format_penalty=penalty)
  policy_loss = rl.policy_loss or defaults.policy_loss
  clip = (f"{rl.clip_eps:g}" if not rl.clip_eps_high
          else f"[1-{rl.clip_eps:g}, 1+{rl.clip_eps_high:g}]")
  pl = f"ppo (clip ε={clip})" if policy_loss == "ppo" else "reinforce"
  label = (f"{advantages.reward} reward; advantages: {recipe_name} ({recipe.describe()}); "
           f"policy loss: {pl}, {rl.aggregation}")
  if defaults.objective == "real":
    label += f"; β={rl.beta:g}, λ={rl.lam:g}, shaping {rl.shaping}"
  if rl.kl_coef:
    label += f"; KL {rl.kl_estimator} × {rl.kl_coef:g}"
  return RLSettings(defaults=defaults, advantages=advantages, recipe_name=recipe_name,
                    policy_loss=policy_loss, label=label)


@dataclasses.dataclass(frozen=True)
class Evaluations:
  """Which evaluations a run makes."""
  before_training: bool  # the initial model (eval.before_training, a method that trains)
  after_warmup: bool  # the warm-up model (eval.after_warmup and a warm-up stage)
  periodic: bool  # the validation split every eval.every steps of the final stage
  final: bool  # the final model (eval.at_end; always for method=eval)

  @property
  def any(self) -> bool:
    return self.before_training or self.after_warmup or self.periodic or self.final


def evaluations(config: ConfigDict) -> Evaluations:
  m = methods_lib.get_method(config.method)
  stages = methods_lib.stages_for(config)
  trains = m.judge_data and bool(stages)
  return Evaluations(
      before_training=trains and bool(config.eval.before_training),
      after_warmup=trains and bool(config.eval.after_warmup) and methods_lib.WARMUP_STAGE in stages,
      periodic=trains and config.eval.every > 0,
      final=m.judge_data and (m.evaluates_only or bool(config.eval.at_end)))


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The run's settings resolved once (`resolve`)."""
  method: methods_lib.Method
  stages: tuple[str, ...]
  evaluations: Evaluations
  rl: RLSettings | None  # RL methods only


def resolve(config: ConfigDict, score_values: Sequence[float]) -> RunSettings:
  """The run's settings; `score_values` are the values of its score tokens (the derived format
  penalty depends on them)."""
  m = methods_lib.get_method(config.method)
  return RunSettings(method=m, stages=tuple(methods_lib.stages_for(config)),
                     evaluations=evaluations(config),
                     rl=rl_settings(config, score_values) if m.rl is not None else None)


GPU_PLATFORMS = ("gpu", "cuda", "rocm")
NVIDIA_PLATFORMS = ("gpu", "cuda")  # cuDNN's (jax names a CUDA device's platform "gpu")


def attention_backend(config: ConfigDict, platform: str | None = None) -> str:
  """`model.attention` on `platform` (default: jax's backend; the plan tool passes its target's):
  `auto` -> splash on TPU, xla on GPU, chunked on CPU. A backend the platform cannot run is a
  ConfigError (cudnn off an NVIDIA GPU, splash on a GPU; splash on CPU runs interpreted)."""
  platform = platform or jax.default_backend()
  name = attention_lib.resolve(config.model.attention, platform)
  if name == "cudnn" and platform not in NVIDIA_PLATFORMS:
    raise ConfigError(f"model.attention=cudnn needs an NVIDIA GPU (this run targets {platform}); "
                      "use xla, chunked or auto")
  if name == "splash" and platform in GPU_PLATFORMS:
    raise ConfigError("model.attention=splash is a TPU kernel; on a GPU use xla, cudnn or auto")
  return name


def model_overrides(config: ConfigDict, platform: str | None = None) -> dict[str, Any]:
  """The `model` block's switches that apply to any model source (HF weights or a preset);
  `platform` resolves `model.attention` (`attention_backend`)."""
  mc = config.model
  out: dict[str, Any] = {"remat": mc.remat} if mc.remat else {}
  out["scan_layers"] = bool(mc.scan_layers)
  out["attention"] = attention_backend(config, platform)
  out.update(lora_fields(config))
  return out


def lora_fields(config: ConfigDict) -> dict[str, Any]:
  """`Qwen3Config`'s LoRA fields from `model.lora` (empty when rank is 0: no adapters)."""
  lc = config.model.lora
  if not lc.rank:
    return {}
  targets = (qwen3.LORA_TARGETS if lc.targets.strip() == "all" else
             tuple(t.strip() for t in lc.targets.split(",") if t.strip()))
  return {"lora_rank": int(lc.rank), "lora_alpha": float(lc.alpha), "lora_targets": targets,
          "quantize": lc.quantize}


def preset_model(config: ConfigDict, tokenizer_size: int | None = None,
                 platform: str | None = None) -> qwen3.Qwen3Config:
  """The config's preset model with the `model` block's overrides. vocab_size -1 sizes the
  vocabulary from the tokenizer (a multiple of 64; the preset's when no tokenizer is given)."""
  mc = config.model
  over = model_overrides(config, platform)
  if mc.vocab_size == -1 and tokenizer_size is not None:
    over["vocab_size"] = -(-tokenizer_size // 64) * 64
  elif mc.vocab_size > 0:
    over["vocab_size"] = int(mc.vocab_size)
  if mc.dtype:
    over["dtype"] = mc.dtype
  if mc.param_dtype:
    over["param_dtype"] = mc.param_dtype
  return get_preset(mc.preset).model.replace(**over)


EXACT_OVERRIDES = ("rl.aggregation=sequence-sum", "rl.advantage=rloo", "rl.beta=1",
                   "rl.shaping=log_prob", "rl.shaping_weight=<rl.lam>", "rl.filter=all",
                   "rl.epochs=1", "rl.mini_batch_size=<rl.buffer_size x rl.group_size>",
                   "rl.top_p=1", "rl.top_k=0", "rl.temperature=1", "rl.score_temperature=1",
                   "rl.invalid=penalize", "rl.kl_coef=0", "rl.entropy_coef=0")


def optimizer_steps_per_update(config: ConfigDict) -> int:
  """Optimiser steps per RL update: rl.epochs x the update's mini-batches."""
  rl = config.rl
  return rl.epochs * (rl.buffer_size * rl.group_size // max(rl.mini_batch_size, 1))


def exactness_gaps(config: ConfigDict) -> list[str]:
  """The conditions under which REAL's expected gradient is exactly -grad J (objectives' module
  docstring) that `config` does not meet; [] = the run uses the exact estimator.

  J = E_c[-(y_hat - y*)^2 + lam * log pi(y* | x, c)], invalid rows scoring the constant
  -format_penalty (+ lam * log 1e-8).
  """
  rl = config.rl
  gaps = []
  if rl.aggregation != "sequence-sum":
    gaps.append(f"rl.aggregation={rl.aggregation} (needs sequence-sum)")
  method = methods_lib.get_method(config.method)
  defaults = method.rl if method.rl is not None else methods_lib.get_method("real").rl
  recipe_name, recipe = advantage_recipe(config, defaults)
  if recipe.estimator != "rloo" or recipe.normalize or recipe.clip:
    gaps.append(f"advantages {recipe_name} (needs leave-one-out without normalisation or "
                "clipping: rl.advantage=rloo)")
  if rl.beta != 1.0:
    gaps.append(f"rl.beta={rl.beta:g} (needs 1)")
  consistent = ((rl.shaping == "log_prob" and rl.shaping_weight == rl.lam)
                or (rl.lam == 0 and (rl.shaping == "none" or rl.shaping_weight == 0)))
  if not consistent:
    gaps.append(f"shaping {rl.shaping} x {rl.shaping_weight:g} with lam={rl.lam:g} (needs "
                "rl.shaping=log_prob and rl.shaping_weight=rl.lam, or lam=0 and no shaping)")
  if rl.filter != "all":
    gaps.append(f"rl.filter={rl.filter} (needs all: a filter on the sampled scores selects groups)")
  steps_per_batch = optimizer_steps_per_update(config)
  if steps_per_batch > 1:
    # After the first step the samples are off-policy: clipped per-token PPO ratios are not the
    # sequence-level importance weight, the refinement term is averaged over the old policy's
    # samples with no weight, and the leave-one-out baselines are stale.
    gaps.append(f"{steps_per_batch} optimiser steps per rollout batch (needs one on-policy step: "
                "rl.epochs=1 and one mini-batch, whatever rl.policy_loss)")
  if rl.top_p < 1.0 or rl.top_k or rl.temperature != 1.0:
    gaps.append(f"rollouts at T={rl.temperature:g}, top-p {rl.top_p:g}, top-k {rl.top_k} "
                "(needs T=1, top-p 1, top-k 0: samples from the policy itself)")
  if rl.score_temperature != 1.0:
    gaps.append(f"rl.score_temperature={rl.score_temperature:g} (needs 1)")
  if rl.invalid != "penalize":
    gaps.append("rl.invalid=drop (needs penalize: a constant reward for rows without a score)")
  if rl.kl_coef or rl.entropy_coef:
    gaps.append("a KL or entropy term (not part of J)")
  return gaps


def prompt_buckets(config) -> tuple[int, ...]:
  """Prompt widths (`data.prompt_buckets`, default powers of two up to data.max_prompt_len)."""
  if config.data.prompt_buckets:
    return tuple(int(x) for x in config.data.prompt_buckets.split(","))
  return layout.power_of_two_buckets(int(config.data.max_prompt_len))
