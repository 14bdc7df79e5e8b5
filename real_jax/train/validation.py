"""Checks a config before anything is built or compiled: unknown fields (a typo in a config
file), values outside `config_schema.CHOICES` / `RANGES`, and the cross-field rules (a mesh that
needs more devices than exist, batch sizes that do not divide the mesh's data x fsdp axes or their
micro-batches, a method without what it needs). Each error is a `ConfigError` whose message
names the field and what to change. (`--config.x=...` overrides of unknown fields are rejected
by ml_collections itself: the config is locked.)
"""

from __future__ import annotations

import math

from real_jax import objectives as obj
from real_jax.judge import scales
from real_jax.models import qwen3
from real_jax.train import methods as methods_lib
from real_jax.train import settings as settings_lib
from real_jax.train.config_schema import (CHOICES, RANGES, ConfigDict, ConfigError, base_config,
                                          flatten, get_field)

__all__ = ["check_fields", "check_choices", "check_ranges", "batch_axes_size", "validate"]


def check_fields(config: ConfigDict, schema: ConfigDict | None = None) -> None:
  """Raises ConfigError for fields the schema does not know (e.g. a typo in a config file)."""
  schema = schema or base_config()
  known = flatten(schema)
  known_groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
  for path in flatten(config):
    if path in known:
      continue
    group = path.rsplit(".", 1)[0] if "." in path else ""
    siblings = sorted(k.rsplit(".", 1)[-1] for k in known
                      if (k.rsplit(".", 1)[0] if "." in k else "") == group)
    where = f"config.{group}" if group and group in known_groups else "config"
    raise ConfigError(f"unknown config field config.{path}; the fields of {where} are: "
                      f"{', '.join(siblings) if group in known_groups or not group else ''}. "
                      f"Fix the name in the config file or the --config.{path} override.")




def check_choices(config: ConfigDict) -> None:
  """Raises ConfigError for an enumerated field whose value is not one of `CHOICES`."""
  for path, choices in CHOICES.items():
    v, allowed = get_field(config, path), choices()
    if v not in allowed:
      raise ConfigError(f"config.{path}={v!r} is not one of {list(allowed)}")


def batch_axes_size(config: ConfigDict, num_devices: int) -> tuple[dict[str, int], int]:
  """(resolved mesh shape, data x fsdp size) without building the mesh; ConfigError if it
  needs more than `num_devices` devices (a smaller mesh uses the first devices)."""
  shape = {"data": int(config.mesh.data), "fsdp": int(config.mesh.fsdp),
           "tensor": int(config.mesh.tensor)}
  if list(shape.values()).count(-1) > 1:
    raise ConfigError(f"config.mesh {shape}: at most one axis may be -1")
  for k, v in shape.items():
    if v == 0 or v < -1:
      raise ConfigError(f"config.mesh.{k}={v}: use a positive size or -1 (all remaining devices)")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if -1 in shape.values():
    if num_devices % fixed:
      raise ConfigError(f"config.mesh {shape} cannot be filled from {num_devices} devices "
                        f"({num_devices} is not a multiple of {fixed}); change config.mesh.*")
    shape[[k for k, v in shape.items() if v == -1][0]] = num_devices // fixed
  elif fixed > num_devices:
    raise ConfigError(f"config.mesh {shape} needs {fixed} devices but {num_devices} are "
                      f"available; change config.mesh.* (e.g. --config.mesh.data=-1)")
  # A mesh smaller than the machine runs on the first prod(mesh) devices (e.g. the 1-device CPU
  # demo under 8 fake test devices); main logs a warning.
  return shape, shape["data"] * shape["fsdp"]


def _divides(name: str, value: int, by: int, why: str) -> None:
  if value <= 0:
    raise ConfigError(f"config.{name}={value} must be positive")
  if value % by:
    lo = max(by, value - value % by)
    raise ConfigError(f"config.{name}={value} is not a multiple of {by} ({why}); "
                      f"use e.g. {lo} or {lo + by}")



def check_ranges(config: ConfigDict) -> None:
  """Raises ConfigError for a non-finite float field or a value outside `RANGES`."""
  for name, v in flatten(config).items():
    if isinstance(v, float) and not math.isfinite(v):
      raise ConfigError(f"config.{name}={v} is not a finite number")
  for name, (lo, lo_in, hi, hi_in) in RANGES.items():
    v = get_field(config, name)
    low_ok = lo is None or (v >= lo if lo_in else v > lo)
    high_ok = hi is None or (v <= hi if hi_in else v < hi)
    if not (low_ok and high_ok):
      span = (f"{'[' if lo_in else '('}{lo if lo is not None else '-inf'}, "
              f"{hi if hi is not None else 'inf'}{']' if hi_in else ')'}")
      raise ConfigError(f"config.{name}={v} must be in {span}")


def validate(config: ConfigDict, num_devices: int) -> dict[str, int]:
  """Checks a config before anything is built or compiled; returns the resolved mesh shape.

  Raises ConfigError with a message that names the field and what to change.
  """
  check_fields(config)
  check_choices(config)
  method = methods_lib.get_method(config.method)
  if config.rl.advantage != "custom":
    base = base_config().rl
    changed = [k for k in ("estimator", "normalize", "clip") if config.rl[k] != base[k]]
    if changed:
      raise ConfigError(f"config.rl.{changed[0]} is only read with config.rl.advantage=custom "
                        f"(now {config.rl.advantage!r}); set --config.rl.advantage=custom or "
                        f"pick a recipe: {list(obj.ADVANTAGE_RECIPES)}")
  try:
    scale = scales.as_scale(config.data.scores)
  except ValueError as e:
    raise ConfigError(f"config.data.scores={config.data.scores!r}: {e}") from None
  if config.data.name in ("synthetic", "synthetic_judge") and scale.spec not in ("1-5", "0-4"):
    raise ConfigError(f"config.data.scores={config.data.scores!r}: the synthetic task scores "
                      "0..4 right answers on 5 consecutive scores; use 1-5 (default) or 0-4")
  if config.warmup.replay_every and config.data.name not in ("synthetic", "synthetic_judge"):
    raise ConfigError(f"config.warmup.replay_every={config.warmup.replay_every} replays the "
                      "synthetic pretraining corpus: set it to 0 for data.name="
                      f"{config.data.name!r}")
  if config.warmup.replay_every and config.data.pack:
    raise ConfigError("config.warmup.replay_every: the corpus rows are packed already; turn "
                      "data.pack off for a warm-up with replay")
  if config.data.val_size < 0:
    raise ConfigError(f"config.data.val_size={config.data.val_size} must be >= 0")
  if config.eval.best_metric:
    parts = config.eval.best_metric.split("/")
    if (len(parts) != 2 or parts[0] not in ("rail", "standard")
        or parts[1] not in ("pearson", "spearman", "kendall", "mse")):
      raise ConfigError(f"config.eval.best_metric={config.eval.best_metric!r}: use READOUT/METRIC "
                        "of the validation split, e.g. rail/pearson (or \"\" to keep no best)")
  if config.rl.format_penalty != -1.0 and config.rl.format_penalty < 0:
    raise ConfigError(f"config.rl.format_penalty={config.rl.format_penalty}: use a value >= 0 "
                      "(the invalid row's reward is its negative) or -1 (derived)")
  if not config.model.preset and not config.model.hf_dir:
    raise ConfigError("set config.model.preset (random init) or config.model.hf_dir (weights)")
  lora = settings_lib.lora_fields(config)
  unknown = sorted(set(lora.get("lora_targets", ())) - set(qwen3.LORA_TARGETS))
  if unknown or (lora and not lora["lora_targets"]):
    raise ConfigError(f"config.model.lora.targets={config.model.lora.targets!r}: use all or a "
                      f"comma list of {','.join(qwen3.LORA_TARGETS)}")
  if config.model.lora.quantize and not config.model.lora.rank:
    raise ConfigError(f"config.model.lora.quantize={config.model.lora.quantize!r} stores the "
                      "frozen weights of a LoRA run: set config.model.lora.rank > 0 too")
  problem = method.check(config) if method.check is not None else ""
  if problem:
    raise ConfigError(problem)
  check_ranges(config)
  # Counts: a negative one would run "successfully" doing nothing (a stage of -3 steps).
  for name in ("optim.max_skipped_in_a_row", "debug.nan_update_step", "debug.nan_update_count",
               "rl.steps",
               "warmup.steps", "train.steps", "pretrain.steps", "tract.stage1_steps",
               "log.heartbeat", "rl.epochs", "eval.every", "checkpoint.every", "eval.max_items",
               "rl.max_response_len", "eval.max_response_len", "data.max_prompt_len",
               "rl.buffer_size", "rl.prompts_per_step", "rl.sample_prompts",
               "rl.mini_batch_size", "rl.micro_batch_size", "rl.score_batch_size",
               "train.batch_size", "train.micro_batch_size", "warmup.batch_size",
               "warmup.micro_batch_size", "eval.batch_size", "rl.log_samples_every",
               "rl.log_sample_groups"):
    v = get_field(config, name, None)
    if v is not None and v < 0:
      raise ConfigError(f"config.{name}={v} is negative; use 0 or more")
  if config.rl.group_size < 2 and method.rl is not None:
    raise ConfigError(f"config.rl.group_size={config.rl.group_size}: group advantages need at "
                      "least 2 samples per prompt")

  mesh_shape, nb = batch_axes_size(config, num_devices)
  why = f"the batch is split over the mesh's data x fsdp = {nb} devices"
  stages = methods_lib.stages_for(config)
  if config.data.pack and config.data.pack_length > 0:
    # The widest record a packed stage reads: a prompt (at its bucket) and a target, or for
    # TRACT's stage 2 a prompt and a self-CoT of up to rl.max_response_len tokens.
    prompt = max(settings_lib.prompt_buckets(config))
    longest, what = prompt + config.data.max_target_len, "data.max_target_len"
    if "tract2" in stages:
      self_cot = prompt + config.rl.max_response_len
      if self_cot > longest:
        longest, what = self_cot, "rl.max_response_len (TRACT's self-CoTs)"
    if config.data.pack_length < longest:
      raise ConfigError(f"config.data.pack_length={config.data.pack_length} is shorter than the "
                        f"longest record (the widest prompt bucket {prompt} + {what} = "
                        f"{longest}); raise it, or use 0 (the padded batch's width)")

  for stage in stages:  # every stage's step splits its batch over the mesh
    spec = methods_lib.STAGES.lookup(stage)
    if spec.batch is None:
      continue
    batch_field, micro_field = spec.batch
    batch = get_field(config, batch_field)
    _divides(batch_field, batch, nb, why)
    micro = get_field(config, micro_field) if micro_field else 0
    if micro:
      if batch % micro:
        raise ConfigError(f"config.{micro_field}={micro} does not divide the batch of {batch} "
                          f"rows ({batch_field}); pick a divisor of {batch}")
      _divides(micro_field, micro, nb, why)
  if "rl" in stages:
    rows = config.rl.buffer_size * config.rl.group_size
    if config.rl.mini_batch_size > rows:
      raise ConfigError(f"config.rl.mini_batch_size={config.rl.mini_batch_size} exceeds the "
                        f"{rows} rows of an update (rl.buffer_size x rl.group_size)")
    if rows % config.rl.mini_batch_size:
      raise ConfigError(f"config.rl.mini_batch_size={config.rl.mini_batch_size} does not divide "
                        f"the {rows} rows of an update (rl.buffer_size={config.rl.buffer_size} x "
                        f"rl.group_size={config.rl.group_size}); pick a divisor of {rows}")
    widest = (config.data.max_prompt_len + config.rl.max_response_len + 1) * nb
    if 0 < config.rl.token_budget < widest:
      raise ConfigError(f"config.rl.token_budget={config.rl.token_budget} holds no row at the "
                        f"widest shape: (data.max_prompt_len + rl.max_response_len + 1) x the "
                        f"{nb} devices the batch is split over = {widest}; use at least that")
    if config.rl.token_budget and config.rl.micro_batch_size:
      raise ConfigError(f"config.rl.token_budget={config.rl.token_budget} and "
                        f"config.rl.micro_batch_size={config.rl.micro_batch_size} are both set: "
                        "a token budget makes the micro-batches itself; set one of them to 0")
    policy_loss = config.rl.policy_loss or method.rl.policy_loss
    if config.rl.clip_eps_high and policy_loss != "ppo":
      raise ConfigError(f"config.rl.clip_eps_high={config.rl.clip_eps_high} clips the PPO "
                        f"ratio, but the policy loss is {policy_loss!r}; set "
                        "rl.policy_loss=ppo or rl.clip_eps_high=0")
    if config.rl.score_batch_size:
      _divides("rl.score_batch_size", config.rl.score_batch_size, nb, why)
    _divides("rl.prompts_per_step x rl.group_size",
             config.rl.prompts_per_step * config.rl.group_size, nb, why)
  if settings_lib.evaluations(config).any:
    _divides("eval.batch_size", config.eval.batch_size, nb, why)
  return mesh_shape
