"""The decoder of the Qwen3 and Llama/Mistral families in Flax NNX, used functionally.

One architecture covers both families (`Qwen3Config.family`): pre-norm RMSNorm blocks,
grouped-query attention with half-split RoPE, a SwiGLU MLP. Qwen3 also RMS-normalises each
query and key head before RoPE (`q_norm`/`k_norm`); Llama and Mistral do not, and usually untie
the output projection. The names stay Qwen3's (`Qwen3`, `Qwen3Config`): it was the first family.

Dimension letters used in einsums and shapes:
  B batch (rows), T query length, S key/value length, D hidden (embed),
  N query heads, K key/value heads, Q = N // K query heads per kv head,
  H head dim, F MLP hidden, V vocabulary, L layers,
  G groups (prompts) in a group decode, n rows per group (B = G * n),
  P prompt slots, R a row's own (generated) slots.

Layer parameters are stored stacked with a leading L axis, so one parameter
layout serves both the scanned (`lax.scan`, flat compile time) and the unrolled
forward pass. There is one transformer block, `decoder_layer`, a pure function of a
dict of per-layer arrays; how it attends is passed in (`attend`):

* the full forward (`Qwen3.__call__`: training, the scoring pass, the prefill) attends
  causally by slot index within the batch through `Qwen3Config.attention`'s backend
  (`models/attention.py`: query-chunked XLA by default, so no [B, N, T, S] float32 logits
  exist for T > `attention_chunk`; `xla`, `cudnn` or Pallas `splash` kernels);
* the decode step (`decode_step`, used by the sampler) feeds one token per row against
  a `DecodeCache`: the prompt's keys stored once per group [G, K, P, H] and each row's
  own generated keys [B, K, H, R] (head-dim-major: the one-query score product reads them
  without a transpose) and values [B, K, R, H]. Attention over the two parts is merged exactly with
  their shared max and normaliser (cascade attention), so a group of n samples reads its
  prompt's keys once per step instead of n copies.

The full forward works on left-padded batches with explicit positions and a key
validity mask: query `t` sees key `s` iff `kv_mask[b, s]` and `s <= t`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from real_jax import sharding as shd
from real_jax.layout import positions_from_mask
from real_jax.models import attention as attention_lib
from real_jax.models.attention import attention

__all__ = [
    "REMATS", "FAMILIES", "LORA_TARGETS", "LORA_INPUT_AXES", "lora_adapter_init", "QUANTIZERS", "quantize_int8",
    "dequantize", "Qwen3Config", "PARAM_AXES", "CACHE_AXES", "KEY_CACHE_AXES",
    "DecoderLayers", "LAYER_PARAM_NAMES", "rms_norm", "apply_rope", "attention",
    "positions_from_segments", "Attend", "decoder_layer", "Qwen3", "DecodeCache", "decode_cache",
    "constrain_cache", "decode_weights", "decode_step", "forward_logits"]

Array = jax.Array

_MASK_VALUE = -1e30  # finite, so a fully masked (padding) query row gives no NaN


# Projections LoRA can adapt (all of attention and the MLP, as TRACT's recipe does), with the
# number of input axes of each stacked weight after the layer axis (o_proj reads [N, H]).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_INPUT_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1,
                   "up_proj": 1, "down_proj": 1}
QUANTIZERS = ("", "int8")  # storage of the frozen LoRA targets ("": param_dtype)
REMATS = ("none", "full", "dots")  # no recompute | recompute each block | save matmul outputs
# Model families and whether their attention normalises each q/k head (Hugging Face model_type).
FAMILIES = {"qwen3": True, "llama": False, "mistral": False}


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
  # Queries per attention block of the `chunked` backend: attention logits exist as
  # [B, N, attention_chunk, S] float32 at most (forward and backward).
  attention_chunk: int = 512
  # The full forward's attention (`models.attention.ATTENTION_BACKENDS`): chunked | xla | cudnn
  # | splash (the config's `model.attention`, `auto` resolved per platform). The decode step is
  # the same on every backend.
  attention: str = "chunked"
  initializer_range: float = 0.02
  family: str = "qwen3"  # a key of FAMILIES: Hugging Face model_type, q/k norm or not
  # Mistral's sliding-window attention: sequences up to this length only (the window is not
  # implemented; within it, attention is plain causal). None: no window.
  sliding_window: int | None = None
  # LoRA adapters on the stacked projections (0 = none): each target t gets `t_lora_a`
  # [L, *in, rank] and `t_lora_b` [L, rank, *out] (`nnx.LoRAParam`, float32, B zero at init),
  # and the block computes x @ W + (lora_alpha / lora_rank) * (x @ A) @ B in the compute dtype.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  # QLoRA: "int8" stores the LoRA targets' frozen weights as int8 with a float32 scale per
  # output channel (`t_scale` [L, *out], `quantize_int8`), dequantized per layer inside the
  # block; "" keeps them in param_dtype.
  quantize: str = ""

  def __post_init__(self):
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # from JSON lists
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown or (self.lora_rank and not self.lora_targets):
      raise ValueError(f"lora_targets={self.lora_targets}: expected a non-empty subset of "
                       f"{LORA_TARGETS}")
    if self.quantize not in QUANTIZERS:
      raise ValueError(f"quantize={self.quantize!r}; expected one of {QUANTIZERS}")
    if self.lora_rank < 0:
      raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")
    if self.family not in FAMILIES:
      raise ValueError(f"family={self.family!r}; expected one of {sorted(FAMILIES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.remat not in REMATS:
      raise ValueError(f"remat={self.remat!r}; expected one of {REMATS}")
    if self.attention_chunk < 1:
      raise ValueError(f"attention_chunk={self.attention_chunk} must be >= 1")
    if self.attention not in attention_lib.ATTENTION_BACKENDS:
      raise ValueError(f"attention={self.attention!r}; expected one of "
                       f"{sorted(attention_lib.ATTENTION_BACKENDS)}")

  def replace(self, **kw) -> "Qwen3Config":
    return dataclasses.replace(self, **kw)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def lora_scale(self) -> float:
    """alpha / rank, the adapters' scale (0 without adapters)."""
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def qk_norm(self) -> bool:
    """Whether each query/key head is RMS-normalised before RoPE (Qwen3; not Llama/Mistral)."""
    return FAMILIES[self.family]

  def check_length(self, length: int) -> None:
    """Raises if `length` tokens exceed the sliding window (which is not implemented)."""
    if self.sliding_window is not None and length > self.sliding_window:
      raise ValueError(f"sequence of {length} tokens exceeds the model's sliding_window="
                       f"{self.sliding_window}; real_jax attends causally without a window, so "
                       f"it only runs sequences up to the window (shorten the prompt/response)")

  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    h, n, k = self.head_dim, self.num_heads, self.num_kv_heads
    per_layer = (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f + 2 * d
                 + (2 * h if self.qk_norm else 0))
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

# Adapters are sharded like the weight they adapt: A keeps its input axes, B its output axes;
# the rank axis is never sharded.
for _t, _n in LORA_INPUT_AXES.items():
  _base = PARAM_AXES[f"layers/{_t}"]
  PARAM_AXES[f"layers/{_t}_lora_a"] = _base[:1 + _n] + (None,)
  PARAM_AXES[f"layers/{_t}_lora_b"] = ("layers", None) + _base[1 + _n:]
  PARAM_AXES[f"layers/{_t}_scale"] = ("layers",) + _base[1 + _n:]  # int8 weights' scales
del _t, _n, _base

# Logical axes of one layer's KV cache: the prompt's keys and values [G, K, P, H] and each
# row's own values [B, K, R, H] (CACHE_AXES); each row's own keys [B, K, H, R] (KEY_CACHE_AXES).
CACHE_AXES = ("cache_batch", "kv_heads", "cache_length", "head_dim")
KEY_CACHE_AXES = ("cache_batch", "kv_heads", "head_dim", "cache_length")


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
    if cfg.qk_norm:
      self.q_norm = nnx.Param(jnp.ones((L, H), pd))
      self.k_norm = nnx.Param(jnp.ones((L, H), pd))
    self.mlp_norm = nnx.Param(jnp.ones((L, D), pd))
    self.gate_proj = nnx.Param(_normal(rngs, (L, D, F), std, pd))
    self.up_proj = nnx.Param(_normal(rngs, (L, D, F), std, pd))
    self.down_proj = nnx.Param(_normal(rngs, (L, F, D), std, pd))
    # After every base weight, so the base draws the same random numbers with or without them.
    for t in cfg.lora_targets if cfg.lora_rank else ():
      a, b = lora_adapter_init(rngs.params(), getattr(self, t).shape, t, cfg.lora_rank,
                               jnp.float32)  # trained: float32 whatever the frozen base's dtype
      setattr(self, f"{t}_lora_a", nnx.LoRAParam(a))
      setattr(self, f"{t}_lora_b", nnx.LoRAParam(b))
    for t in cfg.lora_targets if cfg.quantize else ():
      q, scale = quantize_int8(getattr(self, t)[...], LORA_INPUT_AXES[t])
      setattr(self, t, nnx.Param(q))
      setattr(self, f"{t}_scale", nnx.Param(scale))

  def arrays(self) -> dict[str, Array]:
    return {name: getattr(self, name)[...] for name in LAYER_PARAM_NAMES if hasattr(self, name)}


LAYER_PARAM_NAMES = tuple(k.split("/", 1)[1] for k in PARAM_AXES if k.startswith("layers/"))


def lora_adapter_init(key: Array, weight_shape: tuple[int, ...], target: str, rank: int,
                      dtype) -> tuple[Array, Array]:
  """(A [L, *in, rank], B [L, rank, *out]) for the stacked weight [L, *in, *out] of `target`:
  A uniform in +-1/sqrt(fan_in) (PEFT's kaiming_uniform(a=sqrt(5))), B zero, so an adapted
  model starts as its base."""
  n = LORA_INPUT_AXES[target]
  ins, outs = weight_shape[1:1 + n], weight_shape[1 + n:]
  bound = 1.0 / math.sqrt(math.prod(ins))
  a = jax.random.uniform(key, (weight_shape[0], *ins, rank), jnp.float32, -bound, bound)
  return a.astype(dtype), jnp.zeros((weight_shape[0], rank, *outs), dtype)


def quantize_int8(w: Array, input_axes: int) -> tuple[Array, Array]:
  """(q int8, scale float32 [L, *out]) of a stacked weight w [L, *in, *out]: symmetric, one scale
  per layer and output channel, scale = max |w| over the input axes / 127. Dequantized,
  q * scale is within scale / 2 of w elementwise (round to nearest)."""
  axes = tuple(range(1, 1 + input_axes))
  w32 = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w32), axis=axes)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(w32 / jnp.expand_dims(scale, axes)), -127, 127).astype(jnp.int8)
  return q, scale


def dequantize(p: dict[str, Array], name: str, *, stacked: bool = False) -> Array:
  """Weight `name` of one layer's arrays `p` (or, `stacked`, of all layers: a leading layer
  axis on the weight and its scale) in float32: q * scale when it is stored int8, else as is."""
  scale = p.get(f"{name}_scale")
  if scale is None:
    return p[name]
  q = p[name]
  if stacked:  # scale [L, *out] against q [L, *in, *out]
    scale = jnp.expand_dims(scale, tuple(range(1, 1 + q.ndim - scale.ndim)))
  return q.astype(jnp.float32) * scale.astype(jnp.float32)


def _project(w: dict[str, Array], scale: float, name: str, spec: str, x: Array) -> Array:
  """einsum(spec, x, W) plus, when the layer carries adapters for `name`,
  scale * (x @ A) @ B. spec: "BT<in>,<in><out>-><out>" (batch axes B, T first)."""
  y = jnp.einsum(spec, x, w[name])
  a = w.get(f"{name}_lora_a")
  if a is None:
    return y
  lhs, rest = spec.split(",")
  wspec, out = rest.split("->")
  ins, outs = wspec[:a.ndim - 1], wspec[a.ndim - 1:]
  xa = jnp.einsum(f"{lhs},{ins}r->BTr", x, a) * jnp.asarray(scale, x.dtype)
  return y + jnp.einsum(f"BTr,r{outs}->{out}", xa, w[f"{name}_lora_b"])


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


def positions_from_segments(segment_ids: Array) -> Array:
  """[B,T] int32 RoPE positions of packed rows: each segment counts from 0 at its first column.

  segment_ids [B,T] int (consecutive columns of one record share an id; 0 is padding)."""
  t = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
  first = jnp.concatenate([jnp.ones_like(segment_ids[..., :1], bool),
                           segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
  start = jax.lax.cummax(jnp.where(first, t, 0), axis=segment_ids.ndim - 1)
  return (t - start).astype(jnp.int32)


# attend(q [B,T,N,H], k [B,T,K,H], v [B,T,K,H]) -> (out [B,T,N,H], aux)
Attend = Callable[[Array, Array, Array], tuple[Array, Any]]


def decoder_layer(cfg: Qwen3Config, x: Array, p: dict[str, Array], positions: Array,
                  attend: Attend) -> tuple[Array, Any]:
  """The transformer block (pre-norm). x [B,T,D]; p one layer's arrays; positions [B,T].

  `attend` receives the block's RoPE'd queries and keys and its values and returns the
  attention output and whatever it keeps (the new keys/values for a cache, or None).
  Returns (x, aux).
  """
  dt = cfg.compute_dtype
  w = {name: dequantize(p, name).astype(dt) for name in p if not name.endswith("_scale")}
  proj = functools.partial(_project, w, cfg.lora_scale)
  h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
  q = proj("q_proj", "BTD,DNH->BTNH", h)
  k = proj("k_proj", "BTD,DKH->BTKH", h)
  v = proj("v_proj", "BTD,DKH->BTKH", h)
  if cfg.qk_norm:  # Qwen3 normalises each head before RoPE; Llama/Mistral do not.
    q = rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
  q = apply_rope(q, positions, cfg.rope_theta)
  k = apply_rope(k, positions, cfg.rope_theta)
  attn, aux = attend(q, k, v)
  x = x + proj("o_proj", "BTNH,NHD->BTD", attn)
  h = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
  gate = proj("gate_proj", "BTD,DF->BTF", h)
  up = proj("up_proj", "BTD,DF->BTF", h)
  x = x + proj("down_proj", "BTF,FD->BTD", jax.nn.silu(gate) * up)
  x = shd.constrain(x, ("batch", "length", "act_embed"))
  return x, aux


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
               return_kv: bool = False, segment_ids: Array | None = None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """Full forward; returns (hidden [B,T,D] after the final norm, kv or None).

    Args:
      tokens: [B,T] int token ids (left-padded rows allowed).
      positions: [B,T] int RoPE positions (e.g. cumsum(mask) - 1 for left padding).
      kv_mask: [B,T] bool, which tokens are real (the keys attended to).
      return_kv: also return every layer's keys (after RoPE) and values, stacked
        (k [L,B,T,K,H], v [L,B,T,K,H]) in the compute dtype: the prefill of a decode
        (see `decode_cache`).
      segment_ids: [B,T] int, packed rows: a token attends only within its segment (0 is
        padding); positions then restart per segment (`positions_from_segments`).
    """
    cfg = self.cfg
    cfg.check_length(tokens.shape[1])
    # Gather first, then cast: never copy the whole [V, D] table to the compute dtype.
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(cfg.compute_dtype)
    x = shd.constrain(x, ("batch", "length", "act_embed"))

    def attend(q, k, v):
      out = attention(q, k, v, kv_mask, backend=cfg.attention, chunk=cfg.attention_chunk,
                      segment_ids=segment_ids)
      return out, ((k, v) if return_kv else None)

    block = _remat(lambda x, p: decoder_layer(cfg, x, p, positions, attend), cfg.remat)
    layer_params = self.layers.arrays()
    if cfg.scan_layers:
      x, kv = jax.lax.scan(block, x, layer_params)
    else:
      kvs = []
      for i in range(cfg.num_layers):
        x, kv_i = block(x, {name: a[i] for name, a in layer_params.items()})
        kvs.append(kv_i)
      kv = jax.tree.map(lambda *a: jnp.stack(a), *kvs) if return_kv else None
    x = rms_norm(x, self.final_norm[...].astype(cfg.compute_dtype), cfg.rms_norm_eps)
    return x, kv

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


# ---------------------------------------------------------------------------------------------
# Decoding: one token per row against a group-shared prompt cache


class DecodeCache(NamedTuple):
  """KV cache of a group decode: G groups of n rows (B = G * n; row b belongs to group b // n).

  prompt_k, prompt_v: per layer [G, K, P, H], the prefilled prompt, once per group (read-only).
  prompt_mask: [G, P] bool, real prompt tokens (left padding is False).
  k: per layer [B, K, H, R], each row's own keys, head-dim-major: slot r (the last axis) holds
    the r-th token fed. The decode step's score product (one query, R keys) then reads them in
    place; in the [B, K, R, H] layout XLA:CPU copies the whole buffer transposed every step
    (2.5 vs 0.55 ms a layer at the sampler benchmark's shapes).
  v: per layer [B, K, R, H], each row's own values (slot r on axis 2).
  Per-layer tuples (not stacked [L, ...] arrays): the decode loop updates each layer's
  buffer in place without slicing a stacked one.
  """
  prompt_k: tuple[Array, ...]
  prompt_v: tuple[Array, ...]
  prompt_mask: Array
  k: tuple[Array, ...]
  v: tuple[Array, ...]

  @property
  def num_groups(self) -> int:
    return self.prompt_mask.shape[0]

  @property
  def rows(self) -> int:
    return self.k[0].shape[0]


def decode_cache(kv: tuple[Array, Array], prompt_mask: Array, rows: int, length: int,
                 dtype: Any = None, *, share_prompt: bool = True,
                 constrain: Callable[[Array, tuple], Array] = lambda a, axes: a
                 ) -> DecodeCache:
  """The decode cache after a prefill.

  Args:
    kv: the prefill's stacked (k, v) [L, G, P, K, H] (`Qwen3(..., return_kv=True)`).
    prompt_mask: [G, P] bool.
    rows: B = G * n decode rows (row b samples from prompt b // n).
    length: R, own slots per row (tokens fed after the prompt).
    dtype: cache dtype (default: that of kv).
    share_prompt: store each prompt once per group (G x P + B x R slots). False repeats it for
      each of its rows (B x (P + R) slots, the layout of a plain per-row cache): same results,
      kept to measure what sharing saves.
    constrain: `constrain(array, logical_axes)`, applied to every per-layer cache array (a
      sharding constraint; see `constrain_cache`).
  """
  k, v = kv
  num_layers, g = k.shape[:2]
  if rows % g:
    raise ValueError(f"rows={rows} is not a multiple of the {g} prompts")
  dtype = jnp.dtype(dtype or k.dtype)
  mask = prompt_mask.astype(bool)
  if not share_prompt:
    n = rows // g
    k, v = jnp.repeat(k, n, axis=1), jnp.repeat(v, n, axis=1)
    mask = jnp.repeat(mask, n, axis=0)
  heads_major = lambda a: constrain(jnp.swapaxes(a, 1, 2).astype(dtype), CACHE_AXES)  # [G,K,P,H]
  kh, h = k.shape[3], k.shape[4]
  own = lambda shape, axes: tuple(constrain(jnp.zeros(shape, dtype), axes)
                                  for _ in range(num_layers))
  return DecodeCache(prompt_k=tuple(heads_major(k[i]) for i in range(num_layers)),
                     prompt_v=tuple(heads_major(v[i]) for i in range(num_layers)),
                     prompt_mask=mask, k=own((rows, kh, h, length), KEY_CACHE_AXES),
                     v=own((rows, kh, length, h), CACHE_AXES))


def constrain_cache(cache: DecodeCache, constrain: Callable[[Array, tuple], Array]
                    ) -> DecodeCache:
  """`constrain(array, logical_axes)` applied to every per-layer array of the cache."""
  per_layer = lambda arrays, axes: tuple(constrain(a, axes) for a in arrays)
  return cache._replace(prompt_k=per_layer(cache.prompt_k, CACHE_AXES),
                        prompt_v=per_layer(cache.prompt_v, CACHE_AXES),
                        k=per_layer(cache.k, KEY_CACHE_AXES), v=per_layer(cache.v, CACHE_AXES))


def _cascade_attention(q: Array, pk: Array, pv: Array, pmask: Array, k: Array, v: Array,
                       own_valid: Array) -> Array:
  """One query per row over its group's prompt keys and its own keys, merged exactly.

  q [B,N,H]; pk/pv [G,K,P,H]; pmask [G,P] bool; k [B,K,H,R]; v [B,K,R,H]; own_valid [R] bool
  -> [B,N,H].
  Both parts share one max and one normaliser, so the result is softmax attention over the
  concatenated keys. The prompt part is one matrix product per (group, kv head) for all n
  rows and Q heads of the group.
  """
  b, n_heads, h = q.shape
  g, kh = pk.shape[:2]
  n, qh, r = b // g, n_heads // kh, v.shape[2]
  scale = h ** -0.5
  f32 = jnp.float32
  lp = jnp.einsum("GnKQH,GKPH->GnKQP", q.reshape(g, n, kh, qh, h), pk,
                  preferred_element_type=f32) * scale
  lp = jnp.where(pmask[:, None, None, None, :], lp, _MASK_VALUE)
  lo = jnp.einsum("BKQH,BKHR->BKQR", q.reshape(b, kh, qh, h), k,
                  preferred_element_type=f32) * scale
  lo = jnp.where(own_valid, lo, _MASK_VALUE).reshape(g, n, kh, qh, r)
  m = jnp.maximum(lp.max(-1), lo.max(-1))[..., None]  # [G,n,K,Q,1]
  ep, eo = jnp.exp(lp - m), jnp.exp(lo - m)
  den = ep.sum(-1, keepdims=True) + eo.sum(-1, keepdims=True)
  num = jnp.einsum("GnKQP,GKPH->GnKQH", ep.astype(pv.dtype), pv, preferred_element_type=f32)
  num = num + jnp.einsum("BKQR,BKRH->BKQH", eo.reshape(b, kh, qh, r).astype(v.dtype), v,
                         preferred_element_type=f32).reshape(g, n, kh, qh, h)
  return (num / den).astype(q.dtype).reshape(b, n_heads, h)


def decode_weights(model: "Qwen3") -> dict[str, Any]:
  """The model's weights for `decode_step`: per layer, cast to the compute dtype once
  (outside the decode loop), and the input/output embeddings."""
  dt = model.cfg.compute_dtype
  stacked = model.layers.arrays()  # slice, then cast: one fused pass, no cast copy of the stack
  layer = lambda i: {name: a[i] for name, a in stacked.items()}
  return {"layers": tuple({name: dequantize(layer(i), name).astype(dt) for name in stacked
                           if not name.endswith("_scale")} for i in range(model.cfg.num_layers)),
          "embedding": model.embedding[...], "final_norm": model.final_norm[...].astype(dt),
          "output": model.output_embedding()}


def decode_step(cfg: Qwen3Config, weights: dict[str, Any], tokens: Array, positions: Array,
                cache: DecodeCache, slot: Array | int) -> tuple[Array, DecodeCache]:
  """Feeds one token per row through `decoder_layer`; returns (logits [B,V] f32, new cache).

  tokens, positions: [B] int (positions continue each row's prompt positions).
  slot: the own-cache slot written now (scalar); the row attends to its group's real prompt
    tokens and to its own slots 0..slot.
  weights: `decode_weights(model)`. Layers are unrolled: each updates its own cache buffer.
  """
  dt = cfg.compute_dtype
  x = jnp.take(weights["embedding"], tokens, axis=0).astype(dt)[:, None]  # [B,1,D]
  x = shd.constrain(x, ("batch", "length", "act_embed"))
  own_valid = jnp.arange(cache.v[0].shape[2]) <= slot
  new_k, new_v = [], []
  for layer, p in enumerate(weights["layers"]):
    def attend(q, k, v, layer=layer):
      ck = jax.lax.dynamic_update_slice(  # [B,1,K,H] -> slot of [B,K,H,R]
          cache.k[layer], jnp.transpose(k, (0, 2, 3, 1)).astype(cache.k[layer].dtype),
          (0, 0, 0, slot))
      cv = jax.lax.dynamic_update_slice(
          cache.v[layer], jnp.swapaxes(v, 1, 2).astype(cache.v[layer].dtype), (0, 0, slot, 0))
      out = _cascade_attention(q[:, 0], cache.prompt_k[layer].astype(dt),
                               cache.prompt_v[layer].astype(dt), cache.prompt_mask,
                               ck.astype(dt), cv.astype(dt), own_valid)
      return out[:, None], (ck, cv)
    x, (ck, cv) = decoder_layer(cfg, x, p, positions[:, None], attend)
    new_k.append(ck)
    new_v.append(cv)
  x = rms_norm(x[:, 0], weights["final_norm"], cfg.rms_norm_eps)
  logits = jnp.einsum("BD,VD->BV", x, weights["output"], preferred_element_type=jnp.float32)
  return logits, cache._replace(k=tuple(new_k), v=tuple(new_v))


def forward_logits(graphdef: nnx.GraphDef, params: nnx.State, tokens: Array,
                   mask: Array, positions: Array | None = None) -> Array:
  """Pure full-sequence forward: float32 logits [B,T,V]. Small vocabularies / tests only."""
  model = nnx.merge(graphdef, params)
  if positions is None:
    positions = positions_from_mask(mask)
  hidden, _ = model(tokens, positions, mask)
  return model.logits(hidden)
