"""Hugging Face checkpoints (Qwen3, Llama, Mistral) <-> real_jax parameters, through a key map.

Loading reads a local directory (`config.json`, `model.safetensors` or sharded
`model.safetensors.index.json`) tensor by tensor with `safe_open` and places each
parameter straight into its target sharding with `make_array_from_callback`, so
no device ever holds the whole model. Exporting writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads.

HF Linear weights are [out, in]; ours are named-dimension kernels (e.g. q_proj is
[D, N, H]). Each KeyRule says how one HF tensor maps to (a layer slice of) one
real_jax parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from jax.sharding import Mesh

from real_jax import sharding as shd
from real_jax.models import abstract_model, merge_lora, param_path, param_shardings
from real_jax.models.qwen3 import FAMILIES, Qwen3Config

__all__ = ["config_from_hf", "config_to_hf", "KeyRule", "KEY_MAP", "read_config", "load_hf",
    "export_hf", "write_generation_config"]

# ---------------------------------------------------------------------------
# Config


_SUPPORTED_MODEL_TYPES = tuple(FAMILIES)  # Hugging Face model_type = our family
_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
                  "mistral": "MistralForCausalLM"}
# Tensors some checkpoints carry that are not parameters (old Llama exports' RoPE buffers).
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def config_from_hf(hf: dict[str, Any], *, dtype: str | None = None,
                   param_dtype: str | None = None, **overrides) -> Qwen3Config:
  """Qwen3Config from a Hugging Face `config.json` dict (Qwen3, Llama or Mistral); rejects
  what the decoder does not implement (biases, scaled RoPE, other architectures)."""
  model_type = hf.get("model_type")
  if model_type not in _SUPPORTED_MODEL_TYPES:
    raise ValueError(f"config.json has model_type={model_type!r}; real_jax loads the dense "
                     f"decoders of {_SUPPORTED_MODEL_TYPES}")
  for bias in ("attention_bias", "mlp_bias"):
    if hf.get(bias, False):
      raise ValueError(f"config.json sets {bias}=true; real_jax's decoder has no biases")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json has hidden_act={hf['hidden_act']!r}; only silu (SwiGLU)")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in (None, "default"):
    raise ValueError(f"rope_type={rope_type!r} is not supported (only plain RoPE)")
  theta = rope.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise ValueError("config.json has no rope_theta (neither top-level nor in rope_parameters)")
  heads = hf["num_attention_heads"]
  ckpt_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  cfg = Qwen3Config(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rope_theta=float(theta), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=hf.get("tie_word_embeddings", False),
      max_position_embeddings=hf.get("max_position_embeddings", 40960),
      dtype=dtype or ckpt_dtype, param_dtype=param_dtype or dtype or ckpt_dtype,
      initializer_range=hf.get("initializer_range", 0.02), family=model_type,
      sliding_window=hf.get("sliding_window") if model_type == "mistral" else None)
  return cfg.replace(**overrides) if overrides else cfg


def config_to_hf(cfg: Qwen3Config, dtype: str | None = None) -> dict[str, Any]:
  """A transformers-v5 style `config.json` dict of the config's family."""
  extra: dict[str, Any] = {}
  if cfg.family == "llama":
    extra = {"mlp_bias": False}
  elif cfg.family == "mistral":
    extra = {"sliding_window": cfg.sliding_window}
  return {
      "architectures": [_ARCHITECTURES[cfg.family]], "model_type": cfg.family,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings,
      "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
      "initializer_range": cfg.initializer_range,
      "dtype": dtype or cfg.param_dtype, **extra,
  }


# ---------------------------------------------------------------------------
# Key map


@dataclasses.dataclass(frozen=True)
class KeyRule:
  """One HF tensor name pattern <-> one real_jax parameter (a layer slice if per-layer)."""
  hf: str  # regex with an optional (?P<layer>\d+) group
  ours: str  # parameter path, e.g. "layers/q_proj"
  to_ours: Callable[[np.ndarray, Qwen3Config], np.ndarray]
  to_hf: Callable[[np.ndarray, Qwen3Config], np.ndarray]


def _ident(x, cfg):
  return x


def _t(x, cfg):
  return x.T


def _rule(hf_suffix, ours, to_ours=_ident, to_hf=_ident):
  return KeyRule(r"model\.layers\.(?P<layer>\d+)\." + re.escape(hf_suffix), ours, to_ours, to_hf)


KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule(r"model\.embed_tokens\.weight", "embedding", _ident, _ident),
    KeyRule(r"model\.norm\.weight", "final_norm", _ident, _ident),
    KeyRule(r"lm_head\.weight", "lm_head", _t, _t),
    _rule("input_layernorm.weight", "layers/attn_norm"),
    _rule("post_attention_layernorm.weight", "layers/mlp_norm"),
    _rule("self_attn.q_norm.weight", "layers/q_norm"),
    _rule("self_attn.k_norm.weight", "layers/k_norm"),
    # [N*H, D] -> [D, N, H]
    _rule("self_attn.q_proj.weight", "layers/q_proj",
          lambda x, c: x.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
          lambda x, c: x.reshape(c.hidden_size, -1).T),
    _rule("self_attn.k_proj.weight", "layers/k_proj",
          lambda x, c: x.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
          lambda x, c: x.reshape(c.hidden_size, -1).T),
    _rule("self_attn.v_proj.weight", "layers/v_proj",
          lambda x, c: x.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
          lambda x, c: x.reshape(c.hidden_size, -1).T),
    # [D, N*H] -> [N, H, D]
    _rule("self_attn.o_proj.weight", "layers/o_proj",
          lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
          lambda x, c: x.reshape(-1, c.hidden_size).T),
    _rule("mlp.gate_proj.weight", "layers/gate_proj", _t, _t),
    _rule("mlp.up_proj.weight", "layers/up_proj", _t, _t),
    _rule("mlp.down_proj.weight", "layers/down_proj", _t, _t),
)


def _hf_name(rule: KeyRule, layer: int | None) -> str:
  name = rule.hf.replace(r"(?P<layer>\d+)", str(layer)) if layer is not None else rule.hf
  return name.replace("\\", "")


def _match(name: str) -> tuple[KeyRule, int | None] | None:
  for rule in KEY_MAP:
    m = re.fullmatch(rule.hf, name)
    if m:
      return rule, (int(m.group("layer")) if "layer" in m.groupdict() else None)
  return None


# ---------------------------------------------------------------------------
# Loading


def _tensor_index(ckpt_dir: str) -> dict[str, str]:
  """HF tensor name -> safetensors file path."""
  index = os.path.join(ckpt_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {k: os.path.join(ckpt_dir, v) for k, v in weight_map.items()}
  single = os.path.join(ckpt_dir, "model.safetensors")
  if not os.path.exists(single):
    raise FileNotFoundError(f"{ckpt_dir} has neither model.safetensors nor "
                            f"model.safetensors.index.json")
  with safe_open(single, framework="numpy") as f:
    return {k: single for k in f.keys()}


class _Reader:
  """Opens each safetensors file once and reads tensors lazily as numpy arrays."""

  def __init__(self, index: dict[str, str]):
    self._files = {p: safe_open(p, framework="numpy") for p in sorted(set(index.values()))}
    self._index = index

  def get(self, name: str) -> np.ndarray:
    return self._files[self._index[name]].get_tensor(name)


def read_config(ckpt_dir: str) -> dict[str, Any]:
  path = os.path.join(ckpt_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: a Hugging Face checkpoint directory needs config.json")
  with open(path) as f:
    return json.load(f)


def load_hf(ckpt_dir: str, *, mesh: Mesh | None = None, rules=shd.DEFAULT_RULES,
            dtype: str | None = None, param_dtype: str | None = None,
            **config_overrides) -> tuple[Qwen3Config, nnx.GraphDef, nnx.State]:
  """Loads a local HF Qwen3 / Llama / Mistral directory into (cfg, graphdef, params), sharded
  over `mesh`.

  `dtype`/`param_dtype` default to the checkpoint's dtype. Unknown or missing
  tensors raise ValueError listing them.
  """
  cfg = config_from_hf(read_config(ckpt_dir), dtype=dtype, param_dtype=param_dtype,
                       **config_overrides)
  index = _tensor_index(ckpt_dir)
  # Group HF tensors by target parameter; everything must be claimed exactly once.
  by_param: dict[str, dict[int | None, str]] = {}
  unknown = []
  for name in index:
    m = _match(name)
    if m is None:
      if not _IGNORED.fullmatch(name):
        unknown.append(name)
      continue
    rule, layer = m
    by_param.setdefault(rule.ours, {})[layer] = name
  if cfg.tie_word_embeddings and "lm_head" in by_param:
    # Some exports write a tied lm_head anyway; it must equal the embedding.
    by_param.pop("lm_head")

  graphdef, abstract = abstract_model(cfg)
  # A tensor of a parameter this family lacks (q_norm in a Llama checkpoint) is unknown too.
  ours = {param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  unknown += [n for p in sorted(set(by_param) - ours) for n in by_param.pop(p).values()]
  if unknown:
    raise ValueError(f"{ckpt_dir}: {len(unknown)} tensors have no entry in the {cfg.family} "
                     f"key map: {sorted(unknown)[:10]}")
  shardings = param_shardings(abstract, mesh, rules) if mesh is not None else None
  rules_by_param = {r.ours: r for r in KEY_MAP}
  reader = _Reader(index)
  missing = []

  def load_one(keypath, leaf, sharding=None):
    path = param_path(keypath)
    rule = rules_by_param[path]
    got = by_param.get(path, {})
    if path.startswith("layers/"):
      want = list(range(cfg.num_layers))
      lacking = [_hf_name(rule, i) for i in want if i not in got]
      if lacking:
        missing.extend(lacking)
        return leaf
      host = np.stack([rule.to_ours(reader.get(got[i]), cfg) for i in want])
    else:
      if None not in got:
        missing.append(_hf_name(rule, None))
        return leaf
      host = rule.to_ours(reader.get(got[None]), cfg)
    if host.shape != leaf.shape:
      raise ValueError(f"{ckpt_dir}: {path} has shape {host.shape} after mapping, expected "
                       f"{leaf.shape} from config.json")
    host = host.astype(leaf.dtype)
    if sharding is None:
      return jax.device_put(host)
    # Each device receives only its own slice of the host array.
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  if shardings is None:
    params = jax.tree_util.tree_map_with_path(load_one, abstract)
  else:
    params = jax.tree_util.tree_map_with_path(load_one, abstract, shardings)
  if missing:
    raise ValueError(f"{ckpt_dir}: missing {len(missing)} tensors: {missing[:10]}")
  return cfg, graphdef, params


# ---------------------------------------------------------------------------
# Export


def export_hf(out_dir: str, cfg: Qwen3Config, params: nnx.State, *, dtype: str | None = None,
              max_shard_bytes: int = 4 << 30, token_ids: dict[str, int] | None = None) -> str:
  """Writes `params` as a Hugging Face directory of the config's family (config.json +
  safetensors shards). `token_ids` (`eos_token_id`, `pad_token_id`, `bos_token_id`) go into
  config.json. LoRA parameters are merged first (`merge_lora`: W + (alpha / rank) A B), so the
  directory is a plain model of the family."""
  cfg, params = merge_lora(cfg, params)
  os.makedirs(out_dir, exist_ok=True)
  dtype = dtype or cfg.param_dtype
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  tensors: dict[str, np.ndarray] = {}
  rules_by_param = {r.ours: r for r in KEY_MAP}

  def collect(keypath, leaf):
    path = param_path(keypath)
    rule = rules_by_param[path]
    host = np.asarray(jax.device_get(leaf)).astype(np_dtype)
    if path.startswith("layers/"):
      for i in range(cfg.num_layers):
        tensors[_hf_name(rule, i)] = np.ascontiguousarray(rule.to_hf(host[i], cfg))
    else:
      tensors[_hf_name(rule, None)] = np.ascontiguousarray(rule.to_hf(host, cfg))

  jax.tree_util.tree_map_with_path(collect, params)

  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
      weight_map.update({k: fname for k in shard})
    total = sum(t.nbytes for t in tensors.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump({**config_to_hf(cfg, dtype), **(token_ids or {})}, f, indent=2)
  _readable_by_all(out_dir)
  return out_dir


def write_generation_config(out_dir: str, *, eos_token_id: int, pad_token_id: int | None,
                            bos_token_id: int | None = None, do_sample: bool = True,
                            temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                            max_new_tokens: int | None = None) -> str:
  """`generation_config.json`: the stop token and sampling settings `transformers`' `generate`
  uses by default, so an exported judge ends where ours does (at EOS, `<|im_end|>` for Qwen3)."""
  gen: dict[str, Any] = {"eos_token_id": int(eos_token_id), "do_sample": bool(do_sample)}
  if pad_token_id is not None:
    gen["pad_token_id"] = int(pad_token_id)
  if bos_token_id is not None:
    gen["bos_token_id"] = int(bos_token_id)
  if do_sample:
    gen.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
  if max_new_tokens:
    gen["max_new_tokens"] = int(max_new_tokens)
  path = os.path.join(out_dir, "generation_config.json")
  with open(path, "w") as f:
    json.dump(gen, f, indent=2)
  _readable_by_all(out_dir)
  return path


def _readable_by_all(out_dir: str) -> None:
  """Gives every file of an export the same mode, the one `open` gives under the umask
  (safetensors writes its files 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if os.path.isfile(path):
      os.chmod(path, 0o666 & ~umask)
