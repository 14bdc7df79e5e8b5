r"""Top-p without a sort: the sampler's nucleus threshold against sorting the vocabulary.

  python benchmarks/top_p.py                     # 64 rows x 32,000 (the cpu-29m vocabulary)
  python benchmarks/top_p.py --rows 64 --vocab 151936

Side by side in one process, each jitted, one untimed call, then the median of --repeats calls:
  * `sampling._nucleus_threshold` as the sampler runs it (Illinois search; after 10 passes a
    two-level `top_k` lists the at most 32 candidates of the slow rows: the 32 vocabulary chunks
    of 32 with the largest in-bracket maxima, then their 1,024 entries), the same with one
    `top_k` over the whole vocabulary (`finish_chunk=0`), and the search without the finish
    (`finish_after` past the iteration cap), on three logit distributions: Gaussian with std 3
    (long tails: the search is slow), std 1, and std 0.45 (flat: the logits of
    `benchmarks/sampler.py`'s randomly initialised cpu-29m have about this spread);
  * the sort it replaces: `lax.top_k(x, V)` and `jnp.sort` over the whole row, and a small
    `lax.top_k(x, 50)` for scale;
  * the greedy draw: `jnp.argmax` (a variadic reduce on XLA:CPU) against the sampler's
    `sampling._argmax` (the row maximum, then the first index that holds it).
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

from real_jax import sampling  # noqa: E402
from real_jax import sharding as shd  # noqa: E402


def _median_ms(fn, x, repeats: int) -> float:
  jax.block_until_ready(fn(x))  # compile + warm-up, untimed
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=64)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--top-p", type=float, default=0.9)
  p.add_argument("--repeats", type=int, default=20)
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  print(f"machine: {platform.machine()} cpus={os.cpu_count()} jax={jax.__version__} "
        f"device={jax.devices()[0].platform}; {a.rows} x {a.vocab}, top-p {a.top_p}, median of "
        f"{a.repeats} calls; 1-minute load {os.getloadavg()[0]:.2f} at start")
  max_iters = sampling.SamplingConfig().max_search_iters

  def nucleus(finish_after, finish_chunk=32):
    def f(logits):
      e = jnp.exp(logits - logits.max(-1, keepdims=True))
      return sampling._nucleus_threshold(e, e.sum(-1), a.top_p, max_iters,
                                         finish_after=finish_after, finish_chunk=finish_chunk)
    return jax.jit(f)

  rng = np.random.default_rng(0)
  for std in (3.0, 1.0, 0.45):
    x = jnp.asarray(rng.normal(0, std, (a.rows, a.vocab)).astype(np.float32))
    programs = {"search": nucleus(max_iters + 1), "flat": nucleus(10, 0), "two": nucleus(10)}
    e = np.asarray(jax.jit(lambda x: jnp.exp(x - x.max(-1, keepdims=True)))(x))
    nuclei = {k: e >= np.asarray(f(x))[:, None] for k, f in programs.items()}
    assert all(np.array_equal(nuclei["search"], n) for n in nuclei.values()), "nuclei differ"
    ms = {k: _median_ms(f, x, a.repeats) for k, f in programs.items()}
    print(f"Gaussian logits, std {std:g}: search alone {ms['search']:.1f} ms; with the finish "
          f"by one top_k over the vocabulary {ms['flat']:.1f} ms ({ms['flat'] / ms['search']:.2f}x),"
          f" by the two-level top_k (the sampler's) {ms['two']:.1f} ms "
          f"({ms['two'] / ms['search']:.2f}x; {ms['flat'] / ms['two']:.2f}x faster than one "
          f"top_k); the same nucleus")
  x = jnp.asarray(rng.normal(0, 1, (a.rows, a.vocab)).astype(np.float32))
  full = _median_ms(jax.jit(lambda v: jax.lax.top_k(v, a.vocab)[0]), x, a.repeats)
  sort = _median_ms(jax.jit(lambda v: jnp.sort(v, axis=-1)), x, a.repeats)
  small = _median_ms(jax.jit(lambda v: jax.lax.top_k(v, 50)[0]), x, a.repeats)
  print(f"lax.top_k(x, {a.vocab}) {full:.1f} ms, jnp.sort {sort:.1f} ms, lax.top_k(x, 50) "
        f"{small:.1f} ms")
  ours = jax.jit(lambda v: sampling._argmax(v, v.max(-1)))
  assert np.array_equal(np.asarray(ours(x)), np.asarray(jnp.argmax(x, -1))), "argmax differs"
  ref = _median_ms(jax.jit(lambda v: jnp.argmax(v, -1)), x, a.repeats)
  fast = _median_ms(ours, x, a.repeats)
  print(f"greedy draw: jnp.argmax {ref:.2f} ms, the sampler's argmax (max, then the first index "
        f"that holds it) {fast:.2f} ms ({ref / fast:.1f}x); the same tokens")
  print(f"1-minute load {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
  main()
