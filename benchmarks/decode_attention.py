r"""The decode step's attention: own keys stored head-dim-major [B, K, H, R] vs [B, K, R, H].

  python benchmarks/decode_attention.py                      # the sampler benchmark's shapes
  python benchmarks/decode_attention.py --groups 4 --samples 16 --prompt-len 1024 --slots 255

Side by side in one process, alternating call by call: a jitted loop of --steps decode steps
of every layer's cascade attention (`qwen3._cascade_attention`) and cache update at the shapes of
`benchmarks/sampler.py`'s first case (cpu-29m: 4 layers, 8 query heads, 4 KV heads, head_dim 64;
8 prompts x n=8 rows, prompt 64, 127 own slots), once with the cache layout the model uses
(own keys [B, K, H, R]: the one-query score product reads them in place) and once with the
keys [B, K, R, H] like the values (the reference: the score product contracts their minor
axis, and XLA:CPU copies the buffer transposed every step). Both give the same attention
output (checked). Prints the median per decode step and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from real_jax import sharding as shd  # noqa: E402
from real_jax.models import qwen3  # noqa: E402


def _keys_minor_attention(q, pk, pv, pmask, k, v, own_valid):
  """The cascade attention with own keys [B, K, R, H] (the reference layout)."""
  return qwen3._cascade_attention(q, pk, pv, pmask, jnp.swapaxes(k, 2, 3), v, own_valid)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--groups", type=int, default=8)
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--prompt-len", type=int, default=64)
  p.add_argument("--slots", type=int, default=127)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--steps", type=int, default=32)
  p.add_argument("--repeats", type=int, default=10)
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  g, n, pl, r, layers = a.groups, a.samples, a.prompt_len, a.slots, a.layers
  b, heads, kv_heads, h = g * n, 8, 4, 64
  key = jax.random.key(0)
  rnd = lambda i, shape: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
  q, new = rnd(0, (b, heads, h)), rnd(1, (b, 1, kv_heads, h))
  pk, pv = rnd(2, (g, kv_heads, pl, h)), rnd(3, (g, kv_heads, pl, h))
  pmask = jnp.ones((g, pl), bool)
  keys = [rnd(10 + i, (b, kv_heads, r, h)) for i in range(layers)]
  values = tuple(rnd(20 + i, (b, kv_heads, r, h)) for i in range(layers))
  layouts = {"[B,K,H,R] (the model's)": tuple(jnp.swapaxes(k, 2, 3) for k in keys),
             "[B,K,R,H] (reference)": tuple(keys)}

  def program(head_dim_major: bool):
    attend = qwen3._cascade_attention if head_dim_major else _keys_minor_attention
    new_k = jnp.transpose(new, (0, 2, 3, 1)) if head_dim_major else jnp.swapaxes(new, 1, 2)

    @jax.jit
    def steps(q, ks, vs):
      def body(i, carry):
        ks, vs, x = carry
        own_valid = jnp.arange(r) <= i
        out_k, out_v = [], []
        for layer in range(layers):
          at = (0, 0, 0, i) if head_dim_major else (0, 0, i, 0)
          ck = jax.lax.dynamic_update_slice(ks[layer], new_k, at)
          cv = jax.lax.dynamic_update_slice(vs[layer], jnp.swapaxes(new, 1, 2), (0, 0, i, 0))
          x = x + attend(x, pk, pv, pmask, ck, cv, own_valid)
          out_k.append(ck)
          out_v.append(cv)
        return tuple(out_k), tuple(out_v), x
      return jax.lax.fori_loop(0, a.steps, body, (ks, vs, q))[2]
    return steps

  programs = {name: program(i == 0) for i, name in enumerate(layouts)}
  outs = {name: np.asarray(f(q, layouts[name], values)) for name, f in programs.items()}
  first, second = outs.values()
  np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-4)
  print(f"machine: {platform.machine()} cpus={os.cpu_count()} jax={jax.__version__}; {layers} "
        f"layers, {g} prompts x n={n} = {b} rows, prompt {pl}, {r} own slots, {heads} heads / "
        f"{kv_heads} KV heads x {h}; {a.steps} steps per call, median of {a.repeats} calls; "
        f"1-minute load {os.getloadavg()[0]:.2f} at start")
  times = {name: [] for name in programs}
  for _ in range(a.repeats):
    for name, f in programs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(q, layouts[name], values))
      times[name].append(time.perf_counter() - t0)
  ms = {name: 1e3 * statistics.median(t) / a.steps for name, t in times.items()}
  (model_name, model_ms), (ref_name, ref_ms) = ms.items()
  print(f"attention + cache update per decode step: own keys {model_name} {model_ms:.2f} ms, "
        f"{ref_name} {ref_ms:.2f} ms: {ref_ms / model_ms:.2f}x; the same output")
  print(f"1-minute load {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
  main()
