"""Shared by the benchmark scripts: timing and this machine's measured matmul peak."""

from __future__ import annotations

import time


def best_time(fn, repeats: int = 5) -> float:
  """Minimum wall time of `fn()` over `repeats` calls (after one warm-up call)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_peak_gflops(n: int = 2048) -> float:
  """Measured float32 matmul throughput of the default device: a jitted n^3 matmul, best of 5."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / best_time(lambda: f(a).block_until_ready()) / 1e9
