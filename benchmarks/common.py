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


def decode_matmul_program(mcfg, rows: int):
  """(jitted fn, its arguments, its matmul FLOPs): every weight matmul of one decode step
  ([rows, D] against each layer's q, k, v, o, gate, up and down weights, then the output
  projection), chained as the step chains them."""
  import jax
  import jax.numpy as jnp
  d, f, v = mcfg.hidden_size, mcfg.intermediate_size, mcfg.vocab_size
  n, k, h = mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim
  shapes = [(d, n * h), (d, k * h), (d, k * h), (n * h, d), (d, f), (d, f), (f, d)]
  key = jax.random.PRNGKey(0)
  weights = [[jax.random.normal(jax.random.fold_in(key, 7 * i + j), s, jnp.float32) * 0.02
              for j, s in enumerate(shapes)] for i in range(mcfg.num_layers)]
  out = jax.random.normal(key, (d, v), jnp.float32) * 0.02
  x = jnp.ones((rows, d), jnp.float32)

  @jax.jit
  def step(x, weights, out):
    for wq, wk, wv, wo, wg, wu, wd in weights:
      kv = jnp.pad(x @ wk + x @ wv, ((0, 0), (0, n * h - k * h)))
      x = x + (x @ wq + kv) @ wo
      x = x + (jax.nn.silu(x @ wg) * (x @ wu)) @ wd
    return x @ out

  flops = 2 * rows * (mcfg.num_layers * sum(a * b for a, b in shapes) + d * v)
  return step, (x, weights, out), flops


def decode_matmul_gflops(mcfg, rows: int) -> float:
  """Measured float32 matmul throughput at the decode step's own shapes
  (`decode_matmul_program`, best of 5): the second bound of the decode step, what its matmuls
  alone reach at its small row count."""
  step, args, flops = decode_matmul_program(mcfg, rows)
  return flops / best_time(lambda: step(*args).block_until_ready()) / 1e9


def train_step_flops(cfg, rows: int, seq: int, scored_columns: int) -> dict[str, float]:
  """Model FLOPs one train step executes (forward + backward = 3 x forward), by part.

  Args:
    cfg: the model's `Qwen3Config`.
    rows, seq: the step's batch, `[rows, seq]` tokens through every decoder layer.
    scored_columns: the columns on which the output projection runs per row
      (`models.output_columns`: the token log-prob columns padded to whole chunks, plus the
      score position).

  Counts: decoder matmuls 6 x (matmul weights per layer x layers) x rows x seq; the output
  projection 6 x V x D x rows x scored_columns (the embedding lookup is no matmul); attention
  12 x layers x heads x head_dim x seq^2 per row (QK^T and AV, 2 FLOPs a multiply-add, over the
  whole seq x seq square: our kernels mask the upper triangle, they do not skip it). Recomputation
  (remat, the chunked attention's backward) is not counted: this is the MFU numerator.
  """
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  h, n, k = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f  # q, k, v, o, gate, up, down
  parts = {"decoder": 6.0 * cfg.num_layers * per_layer * rows * seq,
           "output": 6.0 * v * d * rows * scored_columns,
           "attention": 12.0 * cfg.num_layers * n * h * rows * seq * seq}
  parts["total"] = sum(parts.values())
  return parts


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
