"""Benchmark: jax.value_and_grad of real_loss vs a plain cross-entropy on the same [B, V] logits.

Usage (defaults: B=256, T=1024, Qwen3 vocabulary V=151936, fp32 and bf16):

  python benchmarks/objectives.py
  python benchmarks/objectives.py --batch 64 --vocab 32000 --repeats 3

For each dtype of the score logits it compiles, in the same process,
  real: value_and_grad of real_loss w.r.t. (cot_log_probs [B, T], score_logits [B, V])
        (token-mean, beta=0.01, lam=1, full-vocabulary expected score, metrics included);
  ce:   value_and_grad of the mean cross-entropy of score_logits at the targets w.r.t.
        score_logits, written idiomatically: optax.softmax_cross_entropy_with_integer_labels
        (logsumexp(x) - x[t]; no [B, V] log-softmax temporary), in float32,
and prints the median wall time per call and the compiled memory analysis
(peak = arguments + outputs + temporaries - aliased), with real / ce ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from real_jax import objectives as obj
from real_jax import sharding as shd

MIB = 1024 * 1024


def _memory(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  if m is None:
    return {"peak": float("nan"), "temp": float("nan")}
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return {"peak": peak / MIB, "temp": m.temp_size_in_bytes / MIB}


def _time(compiled, args, repeats: int) -> float:
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def run(batch: int, cot_len: int, vocab: int, dtype_name: str, repeats: int) -> dict:
  dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype_name]
  rng = np.random.default_rng(0)
  ids = jnp.arange(16, 21)  # Qwen3's "1".."5"
  vals = jnp.arange(1.0, 6.0)
  score_logits = jnp.asarray(rng.normal(size=(batch, vocab)).astype(np.float32), dtype)
  cot_lp = jnp.asarray(-rng.exponential(size=(batch, cot_len)).astype(np.float32), dtype)
  lengths = rng.integers(cot_len // 4, cot_len + 1, size=(batch, 1))
  cot_mask = jnp.asarray(np.arange(cot_len)[None] < lengths, jnp.int32)
  adv = jnp.asarray(rng.normal(size=batch), jnp.float32)
  targets = jnp.asarray(rng.integers(1, 6, size=batch), jnp.float32)
  target_ids = obj.target_token_ids_for(targets, ids, vals)

  def real(lp, sl):
    return obj.real_loss(lp, cot_mask, adv, sl, targets, ids, vals, beta=0.01, lam=1.0)

  def ce(sl):
    # The idiomatic CE (logsumexp(x) - x[t], no [B, V] log-softmax buffer), in float32 like ours.
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(sl.astype(jnp.float32),
                                                                    target_ids))

  real_vg = jax.jit(jax.value_and_grad(real, argnums=(0, 1), has_aux=True))
  ce_vg = jax.jit(jax.value_and_grad(ce))
  out = {}
  for name, fn, args in (("real", real_vg, (cot_lp, score_logits)), ("ce", ce_vg, (score_logits,))):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out[name] = {"ms": _time(compiled, args, repeats), "compile_s": compile_s, **_memory(compiled)}
  # sanity: the two losses see the same logits (lam * nll equals the CE on these targets)
  (_, metrics), _ = real_vg(cot_lp, score_logits)
  ce_val, _ = ce_vg(score_logits)
  np.testing.assert_allclose(float(metrics["nll"]), float(ce_val), rtol=1e-4)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--cot-len", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--dtypes", default="fp32,bf16")
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  shd.use_cpu_without_accelerator()
  dev = jax.devices()[0]
  print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"device={dev.platform}:{dev.device_kind} jax={jax.__version__}")
  print(f"shapes: B={a.batch} T={a.cot_len} V={a.vocab}; median of {a.repeats} calls")
  header = (f"{'dtype':5s} {'fn':5s} {'time ms':>9s} {'peak MiB':>9s} {'temp MiB':>9s} "
            f"{'compile s':>9s}")
  print(header)
  for dt in a.dtypes.split(","):
    r = run(a.batch, a.cot_len, a.vocab, dt, a.repeats)
    for name in ("real", "ce"):
      x = r[name]
      print(f"{dt:5s} {name:5s} {x['ms']:9.1f} {x['peak']:9.1f} {x['temp']:9.1f} "
            f"{x['compile_s']:9.2f}")
    print(f"{dt:5s} ratio real/ce: time {r['real']['ms'] / r['ce']['ms']:.2f}x, "
          f"peak memory {r['real']['peak'] / r['ce']['peak']:.2f}x, "
          f"temp memory {r['real']['temp'] / max(r['ce']['temp'], 1e-9):.2f}x")


if __name__ == "__main__":
  main()
