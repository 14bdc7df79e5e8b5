r"""One REAL update, timed: rollout (sampling), scoring pass, train steps.

The train step is then timed alone (best of --step_repeats), side by side in one process with
log-probs on every column (`response_width=0`, the step without `response_width`) and on the response
columns only (`response_width = new_tokens + 1`, what `run_rl` uses), against a float32 matmul
peak measured in the same process. FLOPs are those each variant executes
(`common.train_step_flops`, shared with the GPU suite): the decoder on every column, the output
projection on the columns scored, attention over the full square.

  python benchmarks/real_update.py                        # tiny-1m and cpu-29m on this CPU
  python benchmarks/real_update.py --presets cpu-29m --prompts 8 --group 8 --new_tokens 128
  python benchmarks/real_update.py --presets qwen3-1.7b --dtype bfloat16 --peak_tflops 989

Each update = `prompts` prompts x `group` CoTs of up to `new_tokens` tokens (random-weight
models rarely reach the delimiter, so rows run to the token limit: the worst case), one no-grad
scoring pass over all rows, then `epochs` x (rows / mini_batch) optimiser steps of the REAL loss.
The first update compiles; the second is timed. Then rollout + scores side by side: the
teacher-forced scoring pass against `rl.scores_from_sampler` (the sampler's own log-probs and
one decode step after the delimiter), best of --step_repeats each. Prints prompts/s, generated tokens/s, the time
split, and (with --peak_tflops) the train step's model FLOPs utilisation (the executed FLOPs of
`common.train_step_flops` over the measured step time).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import best_time, matmul_peak_gflops, profile_ops, train_step_flops  # noqa: E402

from real_jax import sharding as shd  # noqa: E402


def bench(preset: str, *, prompts: int, group: int, prompt_len: int, new_tokens: int,
          epochs: int, mini_batch: int, dtype: str, peak_tflops: float, step_repeats: int = 3,
          profile: str = "", seed: int = 0) -> dict:
  from real_jax import readout
  from real_jax.data import build_synthetic_tokenizer
  from real_jax.judge import load_tokenizer
  from real_jax.judge.scores import resolve_score_tokens
  from real_jax.models import get_preset, init_params, output_columns
  from real_jax.train import config_lib, rl, state as state_lib, steps as steps_lib

  tok_dir = os.path.join(tempfile.mkdtemp(), "tok")
  build_synthetic_tokenizer(tok_dir)
  tok = load_tokenizer(tok_dir)
  st = resolve_score_tokens(tok)
  cfg = get_preset(preset).model
  cfg = cfg.replace(vocab_size=max(cfg.vocab_size, -(-len(tok) // 64) * 64))
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  mesh = shd.make_mesh({"data": -1})
  graphdef, params = init_params(cfg, mesh=mesh, seed=seed)

  c = config_lib.base_config()
  c.rl.group_size = group
  c.rl.mini_batch_size = mini_batch
  c.rl.max_response_len = new_tokens
  c.rl.beta, c.rl.lam = 1.0, 1.0
  c.data.max_prompt_len = max(prompt_len, 64)
  c.data.prompt_buckets = str(prompt_len)
  c.method = "real"
  settings = rl.RolloutSettings.from_config(c, config_lib.rl_settings(c, st.values))
  rng = np.random.default_rng(seed)
  batch = {"prompt_tokens": rng.integers(10, len(tok), size=(prompts, prompt_len)).astype(np.int32),
           "prompt_mask": np.ones((prompts, prompt_len), np.int32),
           "target": rng.integers(1, 6, size=prompts).astype(np.float32)}
  batch["target_int"] = batch["target"].astype(np.int32)
  adv = rl.AdvantageSettings()
  score_fn = readout.make_score_fn(graphdef, st, mesh, top_p=0.9, response_width=new_tokens + 1)
  loss = steps_lib.real_objective(st, steps_lib.RLLossConfig(beta=1.0, lam=1.0,
                                                            response_width=new_tokens + 1))
  rows_n = prompts * group
  tx = state_lib.make_optimizer(lr=1e-6, steps=100)
  state, sh = state_lib.init_state(params, tx, mesh, seed)
  step_fn = None
  out = {}
  for it in range(2):
    t0 = time.time()
    rows, _, stats, t_roll, t_score = rl.rollout_round(
        graphdef, state["params"], None, batch, jax.random.PRNGKey(it), settings=settings,
        advantages=adv, score_fn=score_fn, score_tokens=st, mesh=mesh,
        pad_id=int(tok.pad_token_id))
    if step_fn is None:
      step_fn = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh,
                                          rows.take(slice(0, mini_batch)))
    t1 = time.time()
    n_steps = 0
    for _ in range(epochs):
      for m in range(rows_n // mini_batch):
        mb = rows.take(slice(m * mini_batch, (m + 1) * mini_batch))
        state, met = step_fn(state, shd.put_batch(mb, mesh))
        n_steps += 1
    jax.block_until_ready(met)
    t_train = time.time() - t1
    total = time.time() - t0
    out = {"preset": preset, "params_M": cfg.num_params() / 1e6, "rows": rows_n,
           "seq_len": int(rows.tokens.shape[1]), "gen_tokens": stats.gen_tokens,
           "t_rollout": t_roll, "t_scoring": t_score, "t_train": t_train, "t_total": total,
           "train_steps": n_steps, "prompts_per_s": prompts / total,
           "gen_tokens_per_s": stats.gen_tokens / t_roll}
    print(f"[{preset}] update {it} ({'compile + run' if it == 0 else 'timed'}): "
          f"total {total:.2f}s = rollout {t_roll:.2f}s + scoring {t_score:.2f}s + train "
          f"{t_train:.2f}s ({n_steps} steps)", flush=True)

  # Rollout + scoring: the teacher-forced scoring pass vs the scores from the sampler
  # (rl.scores_from_sampler), interleaved, each compiled first; best of --step_repeats.
  variants = {"scoring pass": settings,
              "from sampler": dataclasses.replace(settings, scores_from_sampler=True)}
  roll = {k: [] for k in variants}
  for r in range(step_repeats + 1):
    for name, st_v in variants.items():
      _, _, _, t_r, t_s = rl.rollout_round(
          graphdef, state["params"], None, batch, jax.random.PRNGKey(100 + r), settings=st_v,
          advantages=adv, score_fn=score_fn, score_tokens=st, mesh=mesh,
          pad_id=int(tok.pad_token_id))
      if r:  # the first round of each compiles
        roll[name].append((t_r + t_s, t_r, t_s))
  out["rollout_scoring"] = {k: min(v) for k, v in roll.items()}
  for name, (t, t_r, t_s) in out["rollout_scoring"].items():
    print(f"[{preset}] rollout + scores, {name:12s}: {t:.2f} s (sampling {t_r:.2f} s, "
          f"scoring {t_s:.2f} s)", flush=True)
  a, b = (out["rollout_scoring"][k][0] for k in variants)
  out["scores_speedup"] = a / b
  print(f"[{preset}] scoring pass / scores from the sampler: {a / b:.2f}x the time of rollout + "
        f"scores; the update ({a:.2f} + {t_train:.2f} s train) -> ({b:.2f} + {t_train:.2f} s): "
        f"{(a + t_train) / (b + t_train):.2f}x", flush=True)

  # The train step alone: all columns scored vs the response columns only, interleaved.
  mb = shd.put_batch(rows.take(slice(0, mini_batch)), mesh)
  seq = int(rows.tokens.shape[1])
  variants = {"all columns": 0, "response only": new_tokens + 1}
  fns, times = {}, {k: [] for k in variants}
  for name, width in variants.items():
    lv = steps_lib.real_objective(st, steps_lib.RLLossConfig(beta=1.0, lam=1.0,
                                                             response_width=width))
    fns[name] = steps_lib.make_train_step(lv, graphdef, tx, mesh, sh,
                                          rows.take(slice(0, mini_batch)), donate=False)
    jax.block_until_ready(fns[name](state, mb))
  for _ in range(step_repeats):
    for name in variants:
      times[name].append(best_time(lambda: jax.block_until_ready(fns[name](state, mb)), 1))
  peak = matmul_peak_gflops()
  out.update(seq_len=seq, matmul_peak_gflops=peak, step={})
  for name, width in variants.items():
    flops = train_step_flops(cfg, mini_batch, seq, output_columns(seq, width))["total"]
    t = min(times[name])
    out["step"][name] = {"s": t, "gflops": flops / t / 1e9, "frac": flops / t / 1e9 / peak}
    print(f"[{preset}] train step ({mini_batch} rows x {seq} tokens), {name:13s}: {t:.2f} s, "
          f"{flops / 1e9:.0f} GFLOP executed -> {flops / t / 1e9:.0f} GFLOP/s = "
          f"{flops / t / 1e9 / peak:.0%} of the measured {peak:.0f} GFLOP/s matmul peak", flush=True)
  a, b = (out["step"][k]["s"] for k in variants)
  print(f"[{preset}] response-only step / all-columns step: {b / a:.2f}x the time", flush=True)
  if profile:
    print(f"[{preset}] largest XLA ops of one response-only train step (trace in {profile}):")
    for ms, shape, op in profile_ops(fns["response only"], (state, mb), profile):
      print(f"  {ms:8.1f} ms  {shape:28s} {op[:100]}")
  flops = n_steps * train_step_flops(cfg, mini_batch, seq,
                                     output_columns(seq, new_tokens + 1))["total"]
  out["train_tflops_per_s"] = flops / t_train / 1e12
  if peak_tflops:
    out["mfu"] = out["train_tflops_per_s"] / peak_tflops
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--presets", default="tiny-1m,cpu-29m")
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--mini_batch", type=int, default=32)
  p.add_argument("--dtype", default="")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="device peak (e.g. 989 for H100 SXM bf16 dense) for MFU")
  p.add_argument("--step_repeats", type=int, default=3)
  p.add_argument("--profile", default="", metavar="DIR",
                 help="also trace one train step into DIR and print its largest XLA ops")
  a = p.parse_args()
  shd.use_cpu_without_accelerator()
  print(f"devices: {jax.devices()}  backend: {jax.default_backend()}")
  results = [bench(pr, prompts=a.prompts, group=a.group, prompt_len=a.prompt_len,
                   new_tokens=a.new_tokens, epochs=a.epochs, mini_batch=a.mini_batch,
                   dtype=a.dtype, peak_tflops=a.peak_tflops, step_repeats=a.step_repeats,
                   profile=a.profile)
             for pr in a.presets.split(",")]
  print()
  print("| preset | params | prompts x n | prompts/s | gen tok/s | rollout s | scoring s | "
        "train s (steps) | train TFLOP/s" + (" | MFU |" if a.peak_tflops else " |"))
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.peak_tflops else ""))
  for r in results:
    line = (f"| {r['preset']} | {r['params_M']:.1f}M | {a.prompts} x {a.group} | "
            f"{r['prompts_per_s']:.2f} | {r['gen_tokens_per_s']:.0f} | {r['t_rollout']:.2f} | "
            f"{r['t_scoring']:.2f} | {r['t_train']:.2f} ({r['train_steps']}) | "
            f"{r['train_tflops_per_s']:.3f} |")
    if a.peak_tflops:
      line += f" {100 * r['mfu']:.1f}% |"
    print(line)


if __name__ == "__main__":
  main()
