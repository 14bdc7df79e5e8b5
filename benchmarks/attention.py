r"""The attention backends side by side (`model.attention`): equality with `chunked`, then time.

  python benchmarks/attention.py                      # chunked vs xla on this CPU (cpu-29m shape)
  python benchmarks/attention.py --backends chunked,xla,cudnn --dtype bfloat16   # a GPU

1. Equality: every backend against `chunked` on left-padded, packed and grouped-query inputs
   (forward and the gradients of sum(out * random cotangent) over the real query rows), max
   |diff| printed per case (`compare`, also run by `benchmarks/gpu_suite.py`).
2. Time, each backend's calls alternated in one process, best of --repeats after a compiling
   call, with the ratio to `chunked`:
   * the attention op alone, forward + backward, at `--rows` x `--length` and the preset's heads;
   * the model's training step: the gradient of the teacher-forced token log-likelihood
     (`models.score_sequences`) of `--rows` x `--length` tokens, all layers;
   * one sampler call (prefill of `--rows` prompts of `--length` tokens on the backend, then
     --new-tokens decode steps, which are the same on every backend).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import best_time  # noqa: E402
from real_jax import models, sampling  # noqa: E402
from real_jax import sharding as shd  # noqa: E402
from real_jax.models import attention as A  # noqa: E402

# name -> (rows, length, query heads, kv heads, head dim, layout)
CASES = {"left_padded_gqa": (2, 256, 8, 2, 64, "left"), "packed_gqa": (2, 256, 8, 2, 64, "packed"),
         "left_padded_mha": (2, 128, 4, 4, 64, "left")}


def case_inputs(case, dtype, seed=0):
  """q, k, v [b, t, heads, h] in dtype, kv_mask [b, t], segment ids or None, cotangent (0 on
  padding rows): left padding of varied widths, or packed rows of 3 segments then padding."""
  b, t, n, k, h, kind = case
  rng = np.random.default_rng(seed)
  q, kk, v = (jnp.asarray(rng.normal(size=(b, t, m, h)), dtype) for m in (n, k, k))
  if kind == "left":
    mask = np.arange(t)[None, :] >= (np.arange(b) * t // 3)[:, None]
    seg = None
  else:
    seg = np.zeros((b, t), np.int32)
    for i in range(b):
      c = np.sort(rng.choice(np.arange(3, t - 4), 3, replace=False))
      seg[i, :c[0]], seg[i, c[0]:c[1]], seg[i, c[1]:c[2]] = 1, 2, 3
    mask = seg > 0
    seg = jnp.asarray(seg)
  cot = jnp.asarray(rng.normal(size=(b, t, n, h)) * mask[:, :, None, None], dtype)
  return q, kk, v, jnp.asarray(mask), seg, cot


def _fwd_bwd(backend, chunk=128):
  def f(q, k, v, mask, seg, cot):
    out, vjp = jax.vjp(lambda q, k, v: A.attention(q, k, v, mask, backend=backend, chunk=chunk,
                                                   segment_ids=seg), q, k, v)
    return (out,) + vjp(cot)
  return jax.jit(f)


def compare(backends, dtype="float32", cases=CASES) -> dict:
  """{case: {backend: max |diff| vs chunked over the real rows, forward and the three grads}}."""
  res = {}
  for name, case in cases.items():
    args = case_inputs(case, dtype)
    mask = np.asarray(args[3])
    ref = [np.asarray(x, np.float32) for x in _fwd_bwd("chunked")(*args)]
    res[name] = {}
    for be in backends:
      if be == "chunked":
        continue
      got = [np.asarray(x, np.float32) for x in _fwd_bwd(be)(*args)]
      res[name][be] = {"out": float(np.abs(got[0] - ref[0])[mask].max()),
                       **{f"d{c}": float(np.abs(a - r).max())
                          for c, a, r in zip("qkv", got[1:], ref[1:])}}
  return res


def _alternate(fns: dict, repeats: int) -> dict:
  """Best time per name, the calls alternated (each compiled by a first untimed call)."""
  for f in fns.values():
    f()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      times[k].append(best_time(f, 1))
  return {k: min(v) for k, v in times.items()}


def timings(backends, *, preset, dtype, rows, length, new_tokens, repeats) -> dict:
  cfg = models.get_preset(preset).model.replace(dtype=dtype)
  out = {}
  # The op alone.
  args = case_inputs((rows, length, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, "left"),
                     dtype)
  fns = {be: (lambda f=_fwd_bwd(be, cfg.attention_chunk): jax.block_until_ready(f(*args)))
         for be in backends}
  out["attention fwd+bwd"] = _alternate(fns, repeats)
  # The model's training step and a sampler call.
  graphdef, params = models.init_params(cfg, seed=0)
  rng = np.random.default_rng(1)
  mask = jnp.asarray(np.arange(length)[None, :] >= (np.arange(rows) * length // (2 * rows))[:, None])
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (rows, length)), jnp.int32) * mask
  score_pos = jnp.full((rows,), length - 1, jnp.int32)
  steps, samplers = {}, {}
  scfg = sampling.SamplingConfig(max_new_tokens=new_tokens, top_p=0.9, prompt_buckets=(length,))
  for be in backends:
    g, _ = models.abstract_model(cfg.replace(attention=be))
    step = jax.jit(jax.grad(lambda p, g=g: models.score_sequences(
        g, p, tokens, mask, score_pos).token_log_probs.sum()))
    steps[be] = lambda step=step: jax.block_until_ready(step(params))
    samplers[be] = lambda g=g: jax.block_until_ready(sampling.sample(
        g, params, tokens, mask, jax.random.key(0), scfg).tokens)
  out["train step (grad)"] = _alternate(steps, repeats)
  out["sampler call"] = _alternate(samplers, repeats)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--backends", default="chunked,xla")
  p.add_argument("--preset", default="cpu-29m")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--rows", type=int, default=4)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  backends = a.backends.split(",")
  print(f"devices: {jax.devices()}  load: {os.getloadavg()[0]:.2f}  "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
  for case, row in compare(backends, a.dtype).items():
    for be, d in row.items():
      print(f"equal? {case:16s} {be:7s} vs chunked ({a.dtype}): max |diff| out {d['out']:.2e}, "
            f"dq {d['dq']:.2e}, dk {d['dk']:.2e}, dv {d['dv']:.2e}", flush=True)
  t = timings(backends, preset=a.preset, dtype=a.dtype, rows=a.rows, length=a.length,
              new_tokens=a.new_tokens, repeats=a.repeats)
  print(f"\n| {a.preset} {a.dtype}, {a.rows} rows x {a.length} tokens | "
        + " | ".join(backends) + " |")
  print("|---|" + "---:|" * len(backends))
  for what, row in t.items():
    ref = row["chunked"] if "chunked" in row else None
    cells = [f"{row[be] * 1e3:.0f} ms" + (f" ({ref / row[be]:.2f}x)" if ref and be != "chunked"
                                          else "") for be in backends]
    print(f"| {what} | " + " | ".join(cells) + " |")
  print(f"load at the end: {os.getloadavg()[0]:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
