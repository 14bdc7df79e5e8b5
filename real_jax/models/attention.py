"""Causal attention of the full forward (training, the scoring pass, the prefill), by backend.

`model.attention` names the backend (`Qwen3Config.attention`); each is one function with the
same contract, registered in `ATTENTION_BACKENDS`:

  fn(q [B,T,N,H], k [B,T,K,H], v [B,T,K,H], kv_mask [B,T] bool, *, chunk, segment_ids) -> [B,T,N,H]

query t sees key s iff kv_mask[b, s] and s <= t (slot index: left padding is masked, not
shifted) and, for packed rows (`segment_ids` [B,T] int, 0 on padding), both are in the same
segment. Grouped-query heads: K divides N. Every backend gives the same output on the real
query rows (rows that are padding attend to whatever the backend makes of an empty row; no
loss reads them). The softmax runs in float32 everywhere.

| backend | what runs | where it is the default |
|---|---|---|
| `chunked` | XLA einsums in query blocks of `chunk` with a flash-style VJP ([B,N,chunk,S] f32 logits at most) | CPU (the reference) |
| `xla` | `jax.nn.dot_product_attention(implementation="xla")` with a bool mask ([B,N,T,S] logits) | GPU |
| `cudnn` | `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention, bf16/fp16) | (GPU once measured) |
| `splash` | Pallas TPU splash attention, `shard_map` over the mesh, the kernel vmapped over the batch | TPU |

`resolve(name, platform)` turns `auto` into one of them. A backend that cannot do a call (cudnn
on float32 inputs) hands it to another backend and logs that once. The decode step against the
KV cache (`qwen3.decode_step`, cascade attention over the group-shared prompt cache) is the same
on every backend: splash is not a decode kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from real_jax import sharding as shd
from real_jax.registry import Registry

Array = jax.Array

__all__ = ["ATTENTION_BACKENDS", "AUTO_BY_PLATFORM", "attention", "chunked_attention",
           "resolve", "splash_block"]

_MASK_VALUE = -1e30  # finite, so a fully masked (padding) query row gives no NaN

# name -> fn(q, k, v, kv_mask, *, chunk, segment_ids) -> out (module docstring)
ATTENTION_BACKENDS = Registry("attention backend")
AUTO_BY_PLATFORM = {"tpu": "splash", "gpu": "xla", "cuda": "xla", "rocm": "xla", "cpu": "chunked"}


def resolve(name: str, platform: str | None = None) -> str:
  """The backend `name` stands for on `platform` (default: jax's backend): `auto` -> splash on
  TPU, xla on GPU, chunked on CPU; a registered name -> itself."""
  if name == "auto":
    platform = platform or jax.default_backend()
    return AUTO_BY_PLATFORM.get(platform, "chunked")
  ATTENTION_BACKENDS.lookup(name)  # a one-line error naming the choices
  return name


def attention(q: Array, k: Array, v: Array, kv_mask: Array, *, backend: str = "chunked",
              chunk: int = 512, segment_ids: Array | None = None) -> Array:
  """Causal grouped-query attention by `backend` (a name in `ATTENTION_BACKENDS`)."""
  fn = ATTENTION_BACKENDS.lookup(backend)
  return fn(q, k, v, kv_mask, chunk=chunk, segment_ids=segment_ids)


_LOGGED: set[str] = set()


def _log_once(msg: str) -> None:
  if msg not in _LOGGED:
    _LOGGED.add(msg)
    logging.info("[attention] %s", msg)


# ---------------------------------------------------------------------------------------------
# chunked: the reference


def _attention_block(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] bool -> [B,T,N,H] (softmax in float32)."""
  b, t, n, h = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, n // kv, h)
  logits = jnp.einsum("BTKQH,BSKH->BKQTS", q, k, preferred_element_type=jnp.float32)
  logits = logits * (h ** -0.5)
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("BKQTS,BSKH->BTKQH", probs, v)
  return out.reshape(b, t, n, h)


def _causal_block(q: Array, k: Array, v: Array, kv_mask: Array, q_slots: Array,
                  segments: Array | None = None, q_segments: Array | None = None) -> Array:
  """Queries at slots q_slots [Tc] against all keys: key s is seen iff kv_mask[b, s], s <= slot
  and, for packed rows, segments[b, s] == q_segments[b, query] ([B, S] and [B, Tc])."""
  slots = jnp.arange(k.shape[1])
  mask = kv_mask.astype(bool)[:, None, :] & (slots[None, None, :] <= q_slots[None, :, None])
  if segments is not None:
    mask = mask & (segments[:, None, :] == q_segments[:, :, None])
  return _attention_block(q, k, v, mask)


def _query_chunks(x: Array, chunk: int) -> Array:
  """[B, T, ...] -> [nc, B, chunk, ...] (zero padded)."""
  t = x.shape[1]
  pad = (-t) % chunk
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(x.shape[0], -1, chunk, *x.shape[2:]).swapaxes(0, 1)


def _blocks(q: Array, segments: Array | None, chunk: int):
  """Per query block: (the block's slots [nc, chunk], its segment ids [nc, B, chunk] or None)."""
  slots = _query_chunks(jnp.arange(q.shape[1])[None], chunk)[:, 0]
  return slots, (None if segments is None else _query_chunks(segments, chunk))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked(q, k, v, kv_mask, segments, chunk):
  t = q.shape[1]
  slots, q_segs = _blocks(q, segments, chunk)
  out = jax.lax.map(lambda xs: _causal_block(xs[0], k, v, kv_mask, xs[1], segments, xs[2]),
                    (_query_chunks(q, chunk), slots, q_segs))
  return out.swapaxes(0, 1).reshape(q.shape[0], -1, *q.shape[2:])[:, :t]


def _chunked_fwd(q, k, v, kv_mask, segments, chunk):
  return _chunked(q, k, v, kv_mask, segments, chunk), (q, k, v, kv_mask, segments)


def _chunked_bwd(chunk, res, g):
  # Flash-style backward: each query block's logits are recomputed and differentiated, so only
  # q, k, v and the masks are kept between the passes.
  q, k, v, kv_mask, segments = res
  t = q.shape[1]
  slots, q_segs = _blocks(q, segments, chunk)

  def one(carry, xs):
    dk, dv = carry
    qc, gc, sc, qs = xs
    _, vjp = jax.vjp(lambda qc, k, v: _causal_block(qc, k, v, kv_mask, sc, segments, qs),
                     qc, k, v)
    dqc, dkc, dvc = vjp(gc)
    return (dk + dkc, dv + dvc), dqc

  (dk, dv), dq = jax.lax.scan(one, (jnp.zeros_like(k), jnp.zeros_like(v)),
                              (_query_chunks(q, chunk), _query_chunks(g, chunk), slots, q_segs))
  dq = dq.swapaxes(0, 1).reshape(q.shape[0], -1, *q.shape[2:])[:, :t]
  return dq, dk, dv, None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@ATTENTION_BACKENDS.register("chunked")
def chunked_attention(q: Array, k: Array, v: Array, kv_mask: Array, *, chunk: int = 512,
                      segment_ids: Array | None = None) -> Array:
  """Query-chunked XLA attention. For T > chunk the queries run in blocks, forward and backward
  (a custom VJP that recomputes each block's logits), so float32 logits exist only as
  [B,N,chunk,T] and the backward keeps only q, k, v between the passes."""
  t = q.shape[1]
  if t <= chunk:
    return _causal_block(q, k, v, kv_mask, jnp.arange(t), segment_ids, segment_ids)
  return _chunked(q, k, v, kv_mask, segment_ids, chunk)


# ---------------------------------------------------------------------------------------------
# xla / cudnn: jax.nn.dot_product_attention


def _dense_mask(kv_mask: Array, segment_ids: Array | None, t: int) -> Array:
  """[B,1,T,S] bool: key s seen by query t (causal by slot, real key, same segment). Explicit,
  not `is_causal` (top-left aligned, and no segment argument)."""
  slots = jnp.arange(t)
  mask = kv_mask.astype(bool)[:, None, :] & (slots[None, None, :] <= slots[None, :, None])
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :] == segment_ids[:, :, None])
  return mask[:, None]


@ATTENTION_BACKENDS.register("xla")
def xla_attention(q: Array, k: Array, v: Array, kv_mask: Array, *, chunk: int = 512,
                  segment_ids: Array | None = None) -> Array:
  """`jax.nn.dot_product_attention(implementation="xla")`: the whole [B,N,T,S] square at once
  (no query chunks: what XLA fuses on GPU); grouped-query heads natively."""
  del chunk
  return jax.nn.dot_product_attention(q, k, v, mask=_dense_mask(kv_mask, segment_ids, q.shape[1]),
                                      implementation="xla")


CUDNN_DTYPES = ("bfloat16", "float16")


@ATTENTION_BACKENDS.register("cudnn")
def cudnn_attention(q: Array, k: Array, v: Array, kv_mask: Array, *, chunk: int = 512,
                    segment_ids: Array | None = None) -> Array:
  """`jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs): cuDNN's fused flash
  attention, bf16/fp16 inputs and head_dim a multiple of 8 up to 128 (256 on Hopper); the bool
  mask becomes a dense bias. Float32 inputs go to `xla`, other heads to `chunked` (logged once)."""
  if q.dtype.name not in CUDNN_DTYPES:
    _log_once(f"cudnn takes bf16/fp16, not {q.dtype.name}: this model's attention runs on xla")
    return xla_attention(q, k, v, kv_mask, chunk=chunk, segment_ids=segment_ids)
  h = q.shape[-1]
  hopper = any(k in jax.devices()[0].device_kind for k in ("H100", "H200", "H800", "GH200"))
  if h % 8 or h > (256 if hopper else 128):
    _log_once(f"cudnn takes head_dim a multiple of 8 up to 128 (256 on Hopper), not {h}: "
              "chunked attention")
    return chunked_attention(q, k, v, kv_mask, chunk=chunk, segment_ids=segment_ids)
  return jax.nn.dot_product_attention(q, k, v, mask=_dense_mask(kv_mask, segment_ids, q.shape[1]),
                                      implementation="cudnn")


# ---------------------------------------------------------------------------------------------
# splash: Pallas TPU splash attention


SPLASH_LANES = 128  # block_kv_compute must be a multiple of this; lengths are padded to it


def splash_block(t: int) -> int:
  """The splash block size for a padded length t (a multiple of 128): 512, 256 or 128."""
  return next(b for b in (512, 256, SPLASH_LANES) if t % b == 0)


def _splash_kernel(t: int, heads: int, interpret: bool):
  """The kernel for one trace (built where it is traced, as MaxText and Tunix do: a kernel
  cached across traces would carry one trace's mask arrays into another)."""
  b = splash_block(t)
  sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                            block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * heads)
  return splash.make_splash_mha(mask=mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                interpret=interpret)


def _splash_local(q: Array, k: Array, v: Array, seg: Array, interpret: bool) -> Array:
  """One shard: q [b,T,n,H], k/v [b,T,k,H], seg [b,T] (0 = padding) -> [b,T,n,H]."""
  h = q.shape[-1]
  kern = _splash_kernel(q.shape[1], q.shape[2], interpret)
  qt = jnp.swapaxes(q, 1, 2) * float(h ** -0.5)  # no softmax-scale argument; a Python float
  out = jax.vmap(kern)(qt, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                       splash.SegmentIds(q=seg, kv=seg))
  return jnp.swapaxes(out, 1, 2)


@ATTENTION_BACKENDS.register("splash")
def splash_attention(q: Array, k: Array, v: Array, kv_mask: Array, *, chunk: int = 512,
                     segment_ids: Array | None = None) -> Array:
  """JAX's Pallas TPU splash attention (MaxText's and Tunix's kernel): a causal mask per head,
  grouped-query heads natively, padding and packed rows as segment ids (padding = segment 0,
  which no real token shares). Lengths are padded to a multiple of 128 (the kernel's lane
  width), of 512 past 512 tokens (its blocks are then 512 wide). Under an `activation_sharding` mesh it runs in `shard_map` (batch over the batch
  axes, heads over the tensor axis where they divide it), the kernel vmapped over the batch.
  Off TPU it runs in Pallas interpret mode (tests on CPU)."""
  del chunk
  b, t, _, _ = q.shape
  seg = kv_mask.astype(jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  seg = jnp.where(kv_mask.astype(bool), seg, 0)
  pad = (-t) % (512 if t > 512 else SPLASH_LANES)  # 512-wide blocks past 512 tokens
  if pad:  # padded columns: segment 0, after every real token (causal: nothing real sees them)
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    seg = jnp.pad(seg, ((0, 0), (0, pad)))
  active = shd.active_mesh()
  mesh, rules = active if active is not None else (None, None)
  on_tpu = (mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()) == "tpu"
  local = functools.partial(_splash_local, interpret=not on_tpu)
  if mesh is None:
    out = local(q, k, v, seg)
  else:
    def spec(x, axes):  # batch and heads only (length and head_dim stay whole in a shard);
      s = shd.logical_to_spec(axes, rules)  # a dimension that does not divide stays whole
      return P(*[e if i in (0, 2) and x.shape[i] % shd.axis_size(mesh, e) == 0 else None
                 for i, e in enumerate(s)])
    qs = spec(q, ("batch", "length", "q_heads", "head_dim"))
    ks = spec(k, ("batch", "length", "kv_heads", "head_dim"))
    if (qs[2] is None) != (ks[2] is None):  # keep each shard's query heads over its kv heads
      qs, ks = P(qs[0], None, None, None), P(ks[0], None, None, None)
    ss = P(qs[0], None)
    out = jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, ss), out_specs=qs,
                        check_vma=False)(q, k, v, seg)
  return out[:, :t]

