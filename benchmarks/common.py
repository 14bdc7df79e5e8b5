"""Shared by the benchmark scripts: timing and this machine's measured matmul peak."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
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


def profile_ops(fn, args, trace_dir: str, top: int = 15) -> list[tuple[float, str, str]]:
  """Traces one call of the jitted `fn(*args)` with `jax.profiler` and returns the `top` XLA ops
  by total time as (ms, result shape, JAX op name), grouping ops by their op-name metadata."""
  import jax
  jax.block_until_ready(fn(*args))
  jax.profiler.start_trace(trace_dir)
  jax.block_until_ready(fn(*args))
  jax.profiler.stop_trace()
  hlo = fn.lower(*args).compile().as_text()
  meta = {m.group(1): (m.group(2), re.sub(r"^jit\([^)]*\)/", "", m.group(3)))
          for m in re.finditer(r"%([\w.\-]+) = (\S+) .*?metadata=\{op_name=\"([^\"]+)\"", hlo)}
  path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
  total = collections.Counter()
  for e in json.load(gzip.open(path))["traceEvents"]:
    if e.get("ph") == "X" and e.get("name") in meta:
      total[meta[e["name"]]] += e["dur"] / 1e3
  return [(ms, shape, op) for (shape, op), ms in total.most_common(top)]
