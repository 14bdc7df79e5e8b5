"""Qwen3-style decoder in Flax NNX, used functionally.

Dimension letters used in einsums and shapes:
  B batch, T query length, S key/value length (cache slots), D hidden (embed),
  N query heads, K key/value heads, G = N // K query heads per kv head,
  H head dim, F MLP hidden, V vocabulary, L layers.

Layer parameters are stored stacked with a leading L axis, so one parameter
layout serves both the scanned (`lax.scan`, flat compile time) and the unrolled
forward pass. The transformer block itself is a pure function of a dict of
per-layer arrays (`decoder_layer`).

The forward pass works on left-padded batches with explicit positions and a
key/value validity mask. With a KV cache, the new tokens are written into the
cache slots `[cache_index, cache_index + T)` and attend causally by slot index:
query `t` sees slot `s` iff `kv_mask[b, s]` and `s <= cache_index + t`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from real_jax import sharding as shd

Array = jax.Array
KVCache = dict[str, Array]  # {"k": [L,B,S,K,H], "v": [L,B,S,K,H]}

_MASK_VALUE = -1e30  # finite, so a fully masked (padding) query row gives no NaN


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
  """Architecture and numerics of a Qwen3-style decoder."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  max_position_embeddings: int = 40960
  # Numerics: parameters are stored in `param_dtype`, matmuls run in `dtype`;
  # norms, softmax and RoPE angles are always float32.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Memory/compile switches.
  remat: str = "none"  # "none" | "full" (recompute the block) | "dots" (save matmul outputs)
  scan_layers: bool = True
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat={self.remat!r}; expected 'none', 'full' or 'dots'")

  def replace(self, **kw) -> "Qwen3Config":
    return dataclasses.replace(self, **kw)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    h, n, k = self.head_dim, self.num_heads, self.num_kv_heads
    per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f + 2 * d + 2 * h
    return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + d


# Logical axes of every parameter, by path. `real_jax.sharding` maps logical
# axes to mesh axes; this table is the single place that says how each weight
# is laid out.
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embedding": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "layers/attn_norm": ("layers", "norm"),
    "layers/q_proj": ("layers", "embed", "q_heads", "head_dim"),
    "layers/k_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/v_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/o_proj": ("layers", "q_heads", "head_dim", "embed"),
    "layers/q_norm": ("layers", "head_dim"),
    "layers/k_norm": ("layers", "head_dim"),
    "layers/mlp_norm": ("layers", "norm"),
    "layers/gate_proj": ("layers", "embed", "mlp"),
    "layers/up_proj": ("layers", "embed", "mlp"),
    "layers/down_proj": ("layers", "mlp", "embed"),
}

CACHE_AXES = ("layers", "cache_batch", "cache_length", "kv_heads", "head_dim")


def _normal(rngs: nnx.Rngs, shape, std, dtype):
  return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class DecoderLayers(nnx.Module):
  """The L transformer blocks, with parameters stacked along a leading layer axis."""

  def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd, std = jnp.dtype(cfg.param_dtype), cfg.initializer_range
    self.attn_norm = nnx.Param(jnp.ones((L, D), pd))
    self.q_proj = nnx.Param(_normal(rngs, (L, D, N, H), std, pd))
    self.k_proj = nnx.Param(_normal(rngs, (L, D, K, H), std, pd))
    self.v_proj = nnx.Param(_normal(rngs, (L, D, K, H), std, pd))
    self.o_proj = nnx.Param(_normal(rngs, (L, N, H, D), std, pd))
    self.q_norm = nnx.Param(jnp.ones((L, H), pd))
    self.k_norm = nnx.Param(jnp.ones((L, H), pd))
    self.mlp_norm = nnx.Param(jnp.ones((L, D), pd))
    self.gate_proj = nnx.Param(_normal(rngs, (L, D, F), std, pd))
    self.up_proj = nnx.Param(_normal(rngs, (L, D, F), std, pd))
    self.down_proj = nnx.Param(_normal(rngs, (L, F, D), std, pd))

  def arrays(self) -> dict[str, Array]:
    return {name: getattr(self, name)[...] for name in LAYER_PARAM_NAMES}


LAYER_PARAM_NAMES = tuple(k.split("/", 1)[1] for k in PARAM_AXES if k.startswith("layers/"))


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
  """RMSNorm in float32, scaled in the input dtype (as Hugging Face Qwen3 does)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(x.dtype) * y.astype(x.dtype)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding, half-split ("rotate_half") layout. x: [B,T,N,H], positions: [B,T]."""
  h = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B,T,H/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin


def attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Grouped-query attention. q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] bool -> [B,T,N,H]."""
  b, t, n, h = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, n // kv, h)
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
  logits = logits * (h ** -0.5)
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
  return out.reshape(b, t, n, h)


def decoder_layer(cfg: Qwen3Config, x: Array, p: dict[str, Array], positions: Array,
                  mask: Array, cache_k: Array | None, cache_v: Array | None,
                  cache_index: Array | int):
  """One pre-norm block. x [B,T,D]; p holds one layer's arrays; cache_k/v [B,S,K,H] or None.

  Returns (x, (new_cache_k, new_cache_v)); the cache entries are None without a cache.
  """
  dt = cfg.compute_dtype
  w = {name: a.astype(dt) for name, a in p.items()}
  h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
  q = jnp.einsum("BTD,DNH->BTNH", h, w["q_proj"])
  k = jnp.einsum("BTD,DKH->BTKH", h, w["k_proj"])
  v = jnp.einsum("BTD,DKH->BTKH", h, w["v_proj"])
  # Qwen3 normalises each head before RoPE.
  q = apply_rope(rms_norm(q, w["q_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
  k = apply_rope(rms_norm(k, w["k_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
  if cache_k is not None:
    idx = (0, cache_index, 0, 0)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), idx)
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), idx)
    k, v = cache_k.astype(dt), cache_v.astype(dt)
  attn = attention(q, k, v, mask)
  x = x + jnp.einsum("BTNH,NHD->BTD", attn, w["o_proj"])
  h = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
  gate = jnp.einsum("BTD,DF->BTF", h, w["gate_proj"])
  up = jnp.einsum("BTD,DF->BTF", h, w["up_proj"])
  x = x + jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate) * up, w["down_proj"])
  x = shd.constrain(x, ("batch", "length", "act_embed"))
  return x, (cache_k, cache_v)


def _remat(fn, mode: str):
  if mode == "none":
    return fn
  policy = None if mode == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return jax.checkpoint(fn, policy=policy)


class Qwen3(nnx.Module):
  """Qwen3 causal LM. Call it for hidden states; `logits` projects them to the vocabulary."""

  def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embedding = nnx.Param(
        _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.initializer_range, pd))
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pd))
    if not cfg.tie_word_embeddings:
      self.lm_head = nnx.Param(
          _normal(rngs, (cfg.hidden_size, cfg.vocab_size), cfg.initializer_range, pd))

  def __call__(self, tokens: Array, positions: Array, kv_mask: Array, *,
               cache: KVCache | None = None,
               cache_index: Array | int = 0) -> tuple[Array, KVCache | None]:
    """Runs the decoder and returns (hidden [B,T,D] after the final norm, new cache).

    Args:
      tokens: [B,T] int token ids (left-padded rows allowed).
      positions: [B,T] int RoPE positions (e.g. cumsum(mask) - 1 for left padding).
      kv_mask: [B,S] bool, which key slots hold real tokens. Without a cache S = T
        (the attention mask of `tokens`); with a cache S is the cache length and the
        mask must already include the slots being written now.
      cache: optional {"k","v"} arrays [L,B,S,K,H] (see `init_cache`).
      cache_index: first cache slot written by `tokens` (scalar, same for all rows).
    """
    cfg = self.cfg
    t = tokens.shape[1]
    # Gather first, then cast: never copy the whole [V, D] table to the compute dtype.
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(cfg.compute_dtype)
    x = shd.constrain(x, ("batch", "length", "act_embed"))
    s = kv_mask.shape[1]
    query_slot = cache_index + jnp.arange(t)
    causal = jnp.arange(s)[None, :] <= query_slot[:, None]  # [T,S]
    mask = kv_mask.astype(bool)[:, None, :] & causal[None]

    block = _remat(functools.partial(decoder_layer, cfg), cfg.remat)
    layer_params = self.layers.arrays()

    if cfg.scan_layers:
      def body(carry, xs):
        p, ck, cv = xs
        carry, (ck, cv) = block(carry, p, positions, mask, ck, cv, cache_index)
        return carry, (ck, cv)
      ck, cv = (cache["k"], cache["v"]) if cache is not None else (None, None)
      x, (new_k, new_v) = jax.lax.scan(body, x, (layer_params, ck, cv))
    else:
      ks, vs = [], []
      for i in range(cfg.num_layers):
        p = {name: a[i] for name, a in layer_params.items()}
        ck = cache["k"][i] if cache is not None else None
        cv = cache["v"][i] if cache is not None else None
        x, (ck, cv) = block(x, p, positions, mask, ck, cv, cache_index)
        ks.append(ck)
        vs.append(cv)
      new_k = jnp.stack(ks) if cache is not None else None
      new_v = jnp.stack(vs) if cache is not None else None

    x = rms_norm(x, self.final_norm[...].astype(cfg.compute_dtype), cfg.rms_norm_eps)
    new_cache = {"k": new_k, "v": new_v} if cache is not None else None
    return x, new_cache

  def logits(self, hidden: Array) -> Array:
    """Projects hidden states [..., D] to float32 logits [..., V]."""
    dt = self.cfg.compute_dtype
    if self.cfg.tie_word_embeddings:
      return jnp.einsum("...D,VD->...V", hidden.astype(dt), self.embedding[...].astype(dt),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("...D,DV->...V", hidden.astype(dt), self.lm_head[...].astype(dt),
                      preferred_element_type=jnp.float32)

  def output_embedding(self) -> Array:
    """The [V, D] output projection in compute dtype (for chunked log-prob gathers)."""
    dt = self.cfg.compute_dtype
    if self.cfg.tie_word_embeddings:
      return self.embedding[...].astype(dt)
    return self.lm_head[...].astype(dt).T


def init_cache(cfg: Qwen3Config, batch_size: int, length: int, dtype: Any = None) -> KVCache:
  """Zeroed KV cache {"k","v"} of shape [L, B, S, K, H] (S = `length` slots)."""
  shape = (cfg.num_layers, batch_size, length, cfg.num_kv_heads, cfg.head_dim)
  dtype = jnp.dtype(dtype or cfg.dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask: Array) -> Array:
  """RoPE positions for left-padded rows: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward_logits(graphdef: nnx.GraphDef, params: nnx.State, tokens: Array,
                   mask: Array, positions: Array | None = None) -> Array:
  """Pure full-sequence forward: float32 logits [B,T,V]. Small vocabularies / tests only."""
  model = nnx.merge(graphdef, params)
  if positions is None:
    positions = positions_from_mask(mask)
  hidden, _ = model(tokens, positions, mask)
  return model.logits(hidden)
