"""Qwen3-style decoder, size presets, abstract init and sharded materialisation.

Typical use (functional NNX: split once, pure functions of params):

  cfg = get_preset("tiny").model
  graphdef, params = init_params(cfg, mesh=mesh)      # created already sharded
  model = nnx.merge(graphdef, params)                  # inside jitted functions
  hidden, _ = model(tokens, positions, mask)
  logits = model.logits(hidden)
  out = score_sequences(graphdef, params, tokens, mask, score_positions)  # log-prob forward
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from real_jax import sharding as shd
from real_jax.models import qwen3
from real_jax.models.presets import PRESETS, Preset, get_preset
from real_jax.models.qwen3 import (CACHE_AXES, PARAM_AXES, DecodeCache, Qwen3, Qwen3Config,
                                   decode_cache, decode_step, decode_weights, forward_logits,
                                   positions_from_mask)
from real_jax.models.scoring import (CandidateOutput, CandidatePaths, ScoreOutput,
                                     log_number_ends, output_columns, score_candidates,
                                     score_sequences)

__all__ = [
    "CACHE_AXES", "PARAM_AXES", "PRESETS", "DecodeCache", "Preset", "Qwen3", "Qwen3Config",
    "CandidateOutput", "CandidatePaths", "ScoreOutput", "abstract_model", "decode_cache", "decode_step", "decode_weights",
    "forward_logits", "get_preset", "init_params", "log_number_ends", "add_lora", "without_lora", "merge_lora",
    "quantize_params",
    "output_columns", "param_path",
    "param_shardings", "positions_from_mask", "score_candidates", "score_sequences",
]


def param_path(keypath) -> str:
  """'layers/q_proj' for a state leaf's key path (drops the Variable's `.value`)."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey) and k.name != "value":
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
  return "/".join(parts)


def abstract_model(cfg: Qwen3Config) -> tuple[nnx.GraphDef, nnx.State]:
  """GraphDef and a State of ShapeDtypeStructs; allocates nothing."""
  return nnx.split(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))))


def param_shardings(state: nnx.State, mesh: Mesh, rules=shd.DEFAULT_RULES) -> Any:
  """NamedSharding for every parameter, from PARAM_AXES and the logical rules."""
  def one(keypath, leaf):
    name = param_path(keypath)
    if name not in PARAM_AXES:
      raise KeyError(f"parameter {name!r} has no entry in PARAM_AXES")
    return shd.named_sharding(leaf.shape, PARAM_AXES[name], mesh, rules, name=name)
  return jax.tree_util.tree_map_with_path(one, state)


def init_params(cfg: Qwen3Config, *, mesh: Mesh | None = None, rules=shd.DEFAULT_RULES,
                seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
  """Random parameters, materialised directly into their shardings (never whole on one device)."""
  rules_key = tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in rules.items()))
  graphdef, init = _compiled_init(cfg, mesh, rules_key)
  return graphdef, init(jax.random.key(seed))


@functools.lru_cache(maxsize=32)
def _compiled_init(cfg: Qwen3Config, mesh: Mesh | None, rules_key: tuple):
  # Cached per (config, mesh): compiling the random initialisers costs seconds on CPU, so
  # re-initialising with another seed must not recompile.
  graphdef, abstract = abstract_model(cfg)
  out_shardings = param_shardings(abstract, mesh, dict(rules_key)) if mesh is not None else None

  def init(key):
    return nnx.split(Qwen3(cfg, rngs=nnx.Rngs(params=key)))[1]

  return graphdef, jax.jit(init, out_shardings=out_shardings)


def add_lora(cfg: Qwen3Config, params: nnx.State, *, seed: int, mesh: Mesh | None = None,
             rules=shd.DEFAULT_RULES) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of `cfg` (which has `lora_rank` > 0) from the base model's `params`
  (without adapters): the base arrays as they are (no copy), plus fresh adapters in their
  shardings (A uniform in +-1/sqrt(fan_in) from `seed`, B zero, so the model's outputs are the
  base's exactly)."""
  graphdef, abstract = abstract_model(cfg)
  adapters, _ = nnx.split_state(abstract, nnx.LoRAParam, ...)
  shardings = param_shardings(adapters, mesh, rules) if mesh is not None else None
  layers = abstract["layers"]

  def init(key):
    values = {}
    for i, t in enumerate(cfg.lora_targets):
      values[f"{t}_lora_a"], values[f"{t}_lora_b"] = qwen3.lora_adapter_init(
          jax.random.fold_in(key, i), layers[t].shape, t, cfg.lora_rank,
          layers[f"{t}_lora_a"].dtype)
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: values[param_path(kp).split("/", 1)[1]], adapters)

  fresh = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
  return graphdef, nnx.merge_state(params, fresh)


def without_lora(params: nnx.State) -> nnx.State:
  """The base model of LoRA `params`: every B zeroed (small arrays; the base weights are
  shared, not copied), so the adapted model computes exactly its base (the KL reference)."""
  adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
  zeroed = jax.tree_util.tree_map_with_path(
      lambda kp, x: jnp.zeros_like(x) if param_path(kp).endswith("_lora_b") else x, adapters)
  return nnx.merge_state(base, zeroed)


def merge_lora(cfg: Qwen3Config, params: nnx.State) -> tuple[Qwen3Config, nnx.State]:
  """(config without adapters, params with W + (alpha / rank) * A B folded into each target
  weight, computed in float32 and cast to the weight's dtype): the plain model that computes
  what the adapted one does (an export)."""
  if not cfg.lora_rank:
    return cfg, params
  adapters, base = nnx.split_state(params, nnx.LoRAParam, ...)
  layers = {k: v[...] for k, v in adapters["layers"].items()}
  stacked = {k: v[...] for k, v in base["layers"].items()}
  dtype = jnp.dtype(cfg.param_dtype)
  merged = {}
  for t in cfg.lora_targets:
    a, b = layers[f"{t}_lora_a"].astype(jnp.float32), layers[f"{t}_lora_b"].astype(jnp.float32)
    w = qwen3.dequantize(stacked, t, stacked=True)  # int8 weights (QLoRA) dequantized
    rank = a.shape[-1]
    delta = jnp.einsum("lir,lro->lio", a.reshape(a.shape[0], -1, rank),
                       b.reshape(b.shape[0], rank, -1)).reshape(w.shape)
    merged[t] = (w + cfg.lora_scale * delta).astype(dtype)
  plain_cfg = cfg.replace(lora_rank=0, quantize="")
  _, abstract = abstract_model(plain_cfg)
  out = jax.tree_util.tree_map_with_path(
      lambda kp, _: merged.get(param_path(kp).split("/", 1)[-1]) if param_path(kp).split(
          "/", 1)[-1] in merged and param_path(kp).startswith("layers/")
      else _lookup(base, param_path(kp)), abstract)
  return plain_cfg, out


def _lookup(state: nnx.State, path: str):
  node = state
  for part in path.split("/"):
    node = node[part]
  return node[...]


def quantize_params(cfg: Qwen3Config, params: nnx.State, *, mesh: Mesh | None = None,
                    rules=shd.DEFAULT_RULES) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of `cfg` (`quantize="int8"`) from the same model's float `params`:
  each LoRA target weight stored int8 with its per-output-channel scale (`quantize_int8`), in
  its shardings; the other arrays as they are."""
  graphdef, abstract = abstract_model(cfg)
  shardings = param_shardings(abstract, mesh, rules) if mesh is not None else None

  def convert(params):
    stacked = {k: v[...] for k, v in params["layers"].items()}
    values = {}
    for t in cfg.lora_targets:
      values[t], values[f"{t}_scale"] = qwen3.quantize_int8(stacked[t], qwen3.LORA_INPUT_AXES[t])
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: values.get(param_path(kp).split("/", 1)[-1])
        if param_path(kp).startswith("layers/") and param_path(kp).split("/", 1)[-1] in values
        else _lookup(params, param_path(kp)), abstract)

  return graphdef, jax.jit(convert, out_shardings=shardings)(params)
