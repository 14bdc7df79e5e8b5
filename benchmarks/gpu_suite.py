r"""The GPU suite: one call on one H100/H200 (under 8 minutes), or `--smoke` on a CPU (the tests).

  bash benchmarks/gpu_suite.sh                 # Qwen3-1.7B shape, random bf16 weights, 1 GPU
  bash benchmarks/gpu_suite.sh --smoke         # tiny-1m on the CPU: the same code, in seconds

Writes `gpu_suite.json` to $OUT (or --out) and prints each figure with its reference beside it:

* sampler decode tokens/s at 64 and 256 rows (prompts x n = 16, prompt 512, 256 new tokens, no
  early stop), the decode step's time against its HBM-bandwidth bound (bf16 weights + the KV
  cache it reads, over the card's bandwidth): the fraction of the bound reached;
* the REAL train step (the trainer's own `steps.make_train_step` with `real_objective`, float32
  master weights, bf16 compute, remat, 16 rows x 768 tokens): model FLOPs utilisation against the
  card's dense bf16 peak (the FLOPs the step executes, `common.train_step_flops`: the output
  layer on the scored response columns only, attention over the full square; best step time);
* attention backends (`model.attention`): `xla` and `cudnn` against `chunked` on left-padded,
  packed and grouped-query bf16 inputs (max |diff| forward and gradients,
  `benchmarks/attention.py`'s `compare`), then the attention op (forward + backward) and the REAL
  train step above timed per backend, side by side (cudnn only on a GPU);
* memory: per program, the plan tool's GPU estimate (`memory_table.program_estimate` x the
  TPU-calibrated factor), XLA's compiled peak, and the device's measured peak bytes in use.

The card's bf16 peak and bandwidth come from its device kind (H100 SXM: 989 TFLOP/s dense,
3.35 TB/s; H200: 989, 4.8; A100: 312, 2.04) or --peak-tflops / --hbm-tbs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from attention import CASES as ATTENTION_CASES, case_inputs, compare  # noqa: E402
from common import best_time, train_step_flops  # noqa: E402
from real_jax.models import attention as attention_lib  # noqa: E402
from real_jax import models, sampling  # noqa: E402
from real_jax import sharding as shd  # noqa: E402
from real_jax.judge.scores import ScoreTokens  # noqa: E402
from real_jax.tools import memory_table  # noqa: E402
from real_jax.train import config_lib, state as state_lib, steps as steps_lib  # noqa: E402
from real_jax.train.batch import RLBatch  # noqa: E402

# device kind substring -> (dense bf16 TFLOP/s, HBM TB/s)
CARDS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.04)}
FULL = dict(preset="qwen3-1.7b", rows=(64, 256), n=16, prompt=512, new=256, train_rows=16,
            train_width=768, micro=8)
SMOKE = dict(preset="tiny-1m", rows=(8,), n=4, prompt=32, new=16, train_rows=4,
             train_width=64, micro=2)
_ST = ScoreTokens(token_ids=(16, 17, 18, 19, 20), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                  delimiter_ids=(5, 6, 7), eos_id=2)
_GIB = 2 ** 30
# bf16 inputs: max |diff| against chunked, forward outputs (O(1) values) and gradients.
ATTENTION_TOL = {"out": 5e-2, "grad": 5e-1}
_BACKEND_COMPILES = [0]  # XLA compilations so far (jax.monitoring's backend-compile event)


def _count_compiles(event: str, duration: float, **_) -> None:
  if event == "/jax/core/compile/backend_compile_duration":
    _BACKEND_COMPILES[0] += 1


@functools.cache
def _listen_for_compiles() -> None:
  """Registers the compile counter once per process."""
  jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def _peak_bytes_in_use() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _compiled_peak(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def _config(s: dict, rows: int, response_len: int):
  """The run config whose programs are these (for the plan tool's estimate)."""
  c = config_lib.base_config()
  c.model.preset, c.model.dtype, c.model.param_dtype = s["preset"], "bfloat16", "float32"
  c.model.remat = "full"
  c.data.max_prompt_len, c.data.prompt_buckets = s["prompt"], str(s["prompt"])
  c.rl.group_size = s["n"]
  c.rl.sample_prompts = c.rl.prompts_per_step = rows // s["n"]
  c.rl.max_response_len = response_len
  c.rl.mini_batch_size, c.rl.micro_batch_size = s["train_rows"], s["micro"]
  c.eval.at_end, c.eval.every = False, 0
  return c


def decode_step_bytes(cfg, rows: int, groups: int, prompt: int, new: int) -> float:
  """Bytes one decode step must read: bf16 decoder weights and output projection, plus the KV
  cache of the mean context (the prompt once per group, half the new tokens per row)."""
  body = cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
  weights = 2 * (body + cfg.vocab_size * cfg.hidden_size)
  slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
  return weights + slot * (groups * prompt + rows * new / 2)


def run(smoke: bool, out_dir: str, peak_tflops: float, hbm_tbs: float) -> dict:
  s = SMOKE if smoke else FULL
  _listen_for_compiles()
  dev = jax.devices()[0]
  card = next((v for k, v in CARDS.items() if k in dev.device_kind), (0.0, 0.0))
  peak_tflops, hbm_tbs = peak_tflops or card[0], hbm_tbs or card[1]
  # The attention a GPU run gets from model.attention=auto (the smoke run on a CPU too).
  attention = attention_lib.resolve("auto", "gpu")
  cfg = models.get_preset(s["preset"]).model.replace(dtype="bfloat16", param_dtype="float32",
                                                      remat="full", attention=attention)
  mesh = shd.make_mesh({"data": 1}, devices=[dev])
  graphdef, params = models.init_params(cfg, mesh=mesh, seed=0)
  res = {"device": f"{dev.platform}: {dev.device_kind}", "smoke": smoke, "preset": s["preset"],
         "params": cfg.num_params(), "peak_tflops": peak_tflops, "hbm_tbs": hbm_tbs,
         "decode": [], "memory": []}
  print(f"{res['device']}, {s['preset']} ({cfg.num_params() / 1e6:.1f} M params), bf16 peak "
        f"{peak_tflops} TFLOP/s, HBM {hbm_tbs} TB/s", flush=True)
  rng = np.random.default_rng(0)

  # Sampler: decode tokens/s and the bandwidth bound, at each row count.
  for rows in s["rows"]:
    g = rows // s["n"]
    scfg = sampling.SamplingConfig(max_new_tokens=s["new"], top_p=0.9,
                                   prompt_buckets=(s["prompt"],))
    one = scfg.replace(max_new_tokens=1)
    toks = rng.integers(10, cfg.vocab_size, (g, s["prompt"])).astype(np.int32)
    mask = np.ones_like(toks, bool)
    # One compilation per program: the ahead-of-time compiled sampler (the jitted function
    # `sampling.sample` runs) is both timed and measured.
    (full, full_args), (first, first_args) = [
        sampling.lower(graphdef, params, toks, mask, jax.random.key(0), c, num_samples=s["n"])
        for c in (scfg, one)]
    compiles_before = _BACKEND_COMPILES[0]
    t0 = time.perf_counter()
    full, first = full.compile(), first.compile()
    compile_s = time.perf_counter() - t0
    call = lambda f, a: jax.block_until_ready(f(*a).tokens)
    t_full = best_time(lambda: call(full, full_args), 3)
    t_prefill = best_time(lambda: call(first, first_args), 3)
    sampler_compiles = _BACKEND_COMPILES[0] - compiles_before  # 2: the full run, the prefill
    step = (t_full - t_prefill) / (s["new"] - 1)
    bound = decode_step_bytes(cfg, rows, g, s["prompt"], s["new"]) / (hbm_tbs * 1e12) \
        if hbm_tbs else None
    compiled = _compiled_peak(full)
    est = memory_table.program_estimate(_config(s, rows, s["new"]), {"data": 1},
                                         attention)["rollout_sampler"]
    r = {"rows": rows, "tokens_per_s": rows * s["new"] / t_full, "call_s": t_full,
         "prefill_s": t_prefill, "decode_step_ms": 1e3 * step, "compile_s": compile_s,
         "compiles": sampler_compiles,
         "bandwidth_bound_ms": 1e3 * bound if bound else None,
         "fraction_of_bound": bound / step if bound else None}
    res["decode"].append(r)
    res["memory"].append(_memory_row(f"rollout_sampler ({rows} rows)", "rollout_sampler",
                                     est, compiled))
    frac = f", bound {r['bandwidth_bound_ms']:.2f} ms = {r['fraction_of_bound']:.0%} of it" \
        if bound else ""
    print(f"sampler {rows} rows ({g} prompts x {s['n']}): {r['tokens_per_s']:.0f} new tokens/s; "
          f"decode step {r['decode_step_ms']:.2f} ms{frac} (compile {compile_s:.0f} s)",
          flush=True)

  # The REAL train step: MFU against the bf16 peak.
  rows, width = s["train_rows"], s["train_width"]
  tx = state_lib.make_optimizer(lr=1e-6, steps=100)
  state, sh = state_lib.init_state(params, tx, mesh, 0)
  resp = width - s["prompt"]
  tokens = rng.integers(10, cfg.vocab_size, (rows, width)).astype(np.int32)
  cot = np.zeros((rows, width), np.float32)
  cot[:, s["prompt"]:width - 1] = 1.0
  f32 = lambda x: np.asarray(x, np.float32)
  batch = RLBatch(tokens=tokens, mask=np.ones((rows, width), bool),
                  score_pos=np.full((rows,), width - 2, np.int32), cot_mask=cot,
                  old_lp=f32(-rng.random((rows, width))), ref_lp=f32(-rng.random((rows, width))),
                  target=f32(rng.integers(1, 6, rows)), target_id=np.full((rows,), 18, np.int32),
                  adv=f32(rng.standard_normal(rows)), pg_keep=np.ones((rows,), np.float32),
                  refine_keep=np.ones((rows,), np.float32))
  loss = steps_lib.real_objective(_ST, steps_lib.RLLossConfig(beta=0.01, lam=1.0,
                                                             response_width=resp + 1))
  fn = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, batch, donate=False,
                                 num_micro=rows // s["micro"])
  b = shd.put_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = fn.lower(state, b).compile()
  jax.block_until_ready(fn(state, b))
  compile_s = time.perf_counter() - t0
  t = best_time(lambda: jax.block_until_ready(fn(state, b)), 3)
  flops = train_step_flops(cfg, rows, width, models.output_columns(width, resp + 1))["total"]
  res["train_step"] = {"rows": rows, "width": width, "s": t, "tflops": flops / t / 1e12,
                       "mfu": flops / t / 1e12 / peak_tflops if peak_tflops else None,
                       "compile_s": compile_s}
  est = memory_table.program_estimate(_config(s, s["rows"][0], resp - 1), {"data": 1},
                                       attention)["rl_step"]
  res["memory"].append(_memory_row("rl_step", "rl_step", est, _compiled_peak(compiled)))
  mfu = f" = {res['train_step']['mfu']:.1%} MFU of {peak_tflops} TFLOP/s" if peak_tflops else ""
  print(f"REAL train step ({rows} rows x {width} tokens, {rows // s['micro']} micro-batches): "
        f"{t * 1e3:.1f} ms, {flops / t / 1e12:.2f} TFLOP/s{mfu} (compile {compile_s:.0f} s)",
        flush=True)
  res["attention"] = attention_suite(cfg, graphdef, state, sh, loss, batch, tx, mesh, s,
                                     on_gpu=dev.platform == "gpu", timed={cfg.attention: t})
  res["measured_peak_bytes_in_use"] = _peak_bytes_in_use()
  for m in res["memory"]:
    print(f"memory {m['program']}: plan estimate {m['estimate'] / _GIB:.2f} GiB, compiled peak "
          f"{m['compiled'] / _GIB:.2f} GiB (estimate / compiled {m['ratio']:.2f})")
  if res["measured_peak_bytes_in_use"] is not None:
    print(f"device peak bytes in use over the suite: "
          f"{res['measured_peak_bytes_in_use'] / _GIB:.2f} GiB")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "gpu_suite.json"), "w") as f:
    json.dump(res, f, indent=2)
  return res


def attention_suite(cfg, graphdef, state, sh, loss, batch, tx, mesh, s, *, on_gpu: bool,
                    timed: dict[str, float]) -> dict:
  """The attention backends against chunked (equality on bf16 inputs), then the op's forward +
  backward and the REAL train step per backend, each timed best of 3 after a compiling call."""
  backends = ["chunked", "xla"] + (["cudnn"] if on_gpu else [])
  # The smoke run on a CPU: one small case (its code path, in seconds).
  names = ATTENTION_CASES if on_gpu else ["packed_gqa"]
  cases = {k: ((8, 1024) if on_gpu else (2, 64)) + ATTENTION_CASES[k][2:] for k in names}
  out = {"backends": backends, "equality_bf16": compare(backends, "bfloat16", cases),
         "op_s": {}, "train_step_s": {}}
  for case, row in out["equality_bf16"].items():
    for be, d in row.items():
      d["ok"] = d["out"] <= ATTENTION_TOL["out"] and max(d["dq"], d["dk"], d["dv"]) <= \
          ATTENTION_TOL["grad"]
      print(f"attention {be} vs chunked, {case} (bf16): max |diff| out {d['out']:.2e}, "
            f"dq {d['dq']:.2e}, dk {d['dk']:.2e}, dv {d['dv']:.2e}: "
            f"{'equal' if d['ok'] else 'NOT EQUAL'} within {ATTENTION_TOL}", flush=True)
  out["equal"] = all(d["ok"] for row in out["equality_bf16"].values() for d in row.values())
  rows, width = s["train_rows"], s["train_width"]
  args = case_inputs((rows, width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, "left"),
                     "bfloat16")
  b = shd.put_batch(batch, mesh)
  for be in backends:
    f = jax.jit(lambda q, k, v, m, seg, cot, be=be: jax.vjp(
        lambda q, k, v: attention_lib.attention(q, k, v, m, backend=be,
                                                chunk=cfg.attention_chunk), q, k, v)[1](cot))
    out["op_s"][be] = best_time(lambda: jax.block_until_ready(f(*args)), 3)
    if be in timed:  # the train step above (the suite's own backend), best of 3 already
      out["train_step_s"][be] = timed[be]
      continue
    g, _ = models.abstract_model(cfg.replace(attention=be))
    fn = steps_lib.make_train_step(loss, g, tx, mesh, sh, batch, donate=False,
                                   num_micro=rows // s["micro"])
    out["train_step_s"][be] = best_time(lambda: jax.block_until_ready(fn(state, b)), 3)
  for what in ("op_s", "train_step_s"):
    ref = out[what]["chunked"]
    print(f"attention {'op fwd+bwd' if what == 'op_s' else 'REAL train step'} ({rows} x {width}): "
          + ", ".join(f"{be} {t * 1e3:.1f} ms ({ref / t:.2f}x chunked)"
                      for be, t in out[what].items()), flush=True)
  return out


def _memory_row(label: str, name: str, parts: dict[str, int], compiled: int) -> dict:
  est = memory_table.calibrated(name, sum(parts.values()), memory_table.CALIBRATION)
  return {"program": label, "estimate": est, "compiled": compiled, "ratio": est / compiled,
          "parts": parts}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (the tests)")
  p.add_argument("--out", default=os.environ.get("OUT", "gpu_suite_out"))
  p.add_argument("--peak-tflops", type=float, default=0.0)
  p.add_argument("--hbm-tbs", type=float, default=0.0)
  a = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  if not a.smoke and jax.devices()[0].platform != "gpu":
    print("gpu_suite: no GPU here (use --smoke on a CPU)", file=sys.stderr)
    return 2
  res = run(a.smoke, a.out, a.peak_tflops, a.hbm_tbs)
  if not res["attention"]["equal"]:
    print("gpu_suite: an attention backend does not equal chunked (see above)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
