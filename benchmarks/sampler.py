"""Rollout throughput and memory: real_jax `sampling.sample` vs transformers `generate`.

A random Qwen3 (default: the `cpu-29m` shape, 4 layers, hidden 512, vocab 32000, tied) is
built by transformers (torch.manual_seed(0)), saved with `save_pretrained` and loaded by
real_jax, so both libraries run the same weights on the same prompts (random token ids, numpy
seed 1234), the same batch (prompts x n rows), the same sampling settings (no top-k), with early
stopping disabled (no EOS, no stop sequence: every row makes --new-tokens tokens). Three
samplers alternate call by call in one process:

  * real_jax, shared: the prompt's KV cache stored once per group (G x P + B x R slots);
  * real_jax, per-row: the same decode with the prompt cache copied to each row
    (`share_prompt_cache=False`, B x (P + R) slots: the layout before group sharing);
  * transformers `generate(num_return_sequences=n)` (eager, torch threads = cores).

tokens/s = rows x new tokens / wall time of one full call (prefill + decode + fetching the
tokens), median over --repeats (>= 3) timed calls; every side first makes one untimed call
(real_jax's compiles, transformers' warms its allocator and kernels). Compile time is reported
separately. Memory: the
compiled sampler's peak (XLA memory analysis: arguments + outputs + temporaries) and, for all
three, the growth of the process's resident memory during a call (sampled every 5 ms).

The decode step's fraction of the FLOP bound: model FLOPs of one decode step (2 x matmul
weights x rows + the attention over the prompt and the generated tokens) over a measured
float32 matmul peak of this machine (a 2048^3 jitted matmul, best of 5), and over the rate the
step's own weight matmuls reach at its row count (`common.decode_matmul_gflops`: one jitted
program of one step's matmuls, [rows, D] against every layer's weights and the output
projection), each against the measured step time ((call - prefill) / (new tokens - 1)).

  python benchmarks/sampler.py                        # the default case (8 prompts x n=8)
  python benchmarks/sampler.py --batch 4 --samples 16 --prompt-len 1024 --new-tokens 256
  python benchmarks/sampler.py --preset qwen3-1.7b --dtype bfloat16 --batch 64 --no-hf  # GPU
  python benchmarks/sampler.py --kv-plan configs/prometheus.py:size=8b --devices 8 --hbm-gib 95.7

--kv-plan prints, without running anything, the KV-cache bytes per device of a config's rollout
(rl.sample_prompts x rl.group_size rows, data.max_prompt_len + rl.max_response_len slots, the
model's compute dtype, the batch split over --devices) in both layouts, and the largest
rl.sample_prompts whose KV cache plus the bf16 weights fit 90% of --hbm-gib. It is the KV part
only (the compiled peak of the whole program is the plan tool's: `python -m real_jax.tools.plan`).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

from common import decode_matmul_gflops, matmul_peak_gflops

_COMPILE = collections.defaultdict(float)


def _listen():
  import jax
  def on_event(event, duration, **_):
    if event.startswith("/jax/core/compile/"):
      _COMPILE[event] += duration
  jax.monitoring.register_event_duration_secs_listener(on_event)


def _compile_seconds() -> float:
  return sum(_COMPILE.values())


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096


class PeakRSS:
  """Peak resident-memory growth of this process while the block runs (5 ms sampling)."""

  def __enter__(self):
    self.base = self.peak = _rss_bytes()
    self._stop = threading.Event()
    def poll():
      while not self._stop.is_set():
        self.peak = max(self.peak, _rss_bytes())
        time.sleep(0.005)
    self._thread = threading.Thread(target=poll, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())
    self.growth = self.peak - self.base


def build_hf_checkpoint(out_dir: str, cfg) -> str:
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  torch.manual_seed(0)
  hf_cfg = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, tie_word_embeddings=cfg.tie_word_embeddings,
                       rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, pad_token_id=0,
                       eos_token_id=None, max_position_embeddings=max(40960, 4096))
  Qwen3ForCausalLM(hf_cfg).save_pretrained(out_dir, safe_serialization=True)
  return out_dir


_HF_CACHE: dict = {}


def run_hf(ckpt: str, prompts: np.ndarray, n: int, new_tokens: int, top_p: float,
           temperature: float, seed: int):
  import torch
  from transformers import Qwen3ForCausalLM
  model = _HF_CACHE.get(ckpt)
  if model is None:
    model = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    _HF_CACHE[ckpt] = model
  ids = torch.tensor(prompts, dtype=torch.long)
  torch.manual_seed(seed)
  with PeakRSS() as mem:
    t0 = time.perf_counter()
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           temperature=temperature, top_p=top_p, top_k=0,
                           num_return_sequences=n, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
    dt = time.perf_counter() - t0
  return dt, out[:, prompts.shape[1]:].numpy(), mem.growth


def run_jax(graphdef, params, prompts, mask, cfg, n, seed):
  import jax
  from real_jax import sampling
  with PeakRSS() as mem:
    t0 = time.perf_counter()
    out = sampling.sample(graphdef, params, prompts, mask, jax.random.key(seed), cfg,
                          num_samples=n)
    tokens = np.asarray(out.tokens)
    np.asarray(out.lengths)
    dt = time.perf_counter() - t0
  return dt, tokens, mem.growth


def compiled_peak_bytes(graphdef, params, prompts, mask, cfg, n) -> int:
  """The sampler program's peak per the compiler: arguments + outputs + temporaries."""
  import jax
  from real_jax import sampling
  lowered, _ = sampling.lower(graphdef, params, prompts, mask, jax.random.key(0), cfg,
                              num_samples=n)
  ma = lowered.compile().memory_analysis()
  return ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes


def decode_step_gflop(mcfg, rows: int, prompt_len: int, new_tokens: int) -> float:
  """Model FLOPs of an average decode step (matmuls + attention over the mean context)."""
  d, f, v = mcfg.hidden_size, mcfg.intermediate_size, mcfg.vocab_size
  n, k, h = mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim
  per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f
  context = prompt_len + new_tokens / 2
  attn = 2 * 2 * n * h * context  # q.k and p.v
  return rows * (2 * (mcfg.num_layers * per_layer + v * d) + mcfg.num_layers * attn) / 1e9


def kv_plan(config_arg: str, devices: int, hbm_gib: float) -> None:
  """Analytic KV-cache bytes per device of a config's rollout, shared vs per-row layout."""
  import jax.numpy as jnp
  from real_jax.train import config_lib
  from real_jax import models
  c = config_lib.load_config(config_arg)
  preset = models.get_preset(c.model.preset)
  m = preset.model
  g, n = c.rl.sample_prompts, c.rl.group_size
  p, r = c.data.max_prompt_len, c.rl.max_response_len
  slot = 2 * m.num_layers * m.num_kv_heads * m.head_dim * jnp.dtype(c.model.dtype or m.dtype).itemsize
  weights = m.num_params() * 2 / devices
  per_row = lambda g: g * n * (p + r) * slot / devices
  shared = lambda g: (g * p + g * n * r) * slot / devices
  budget = 0.9 * hbm_gib * 2**30 - weights
  gib = lambda b: b / 2**30
  print(f"{config_arg}: {c.model.preset}, {m.num_layers} layers x {m.num_kv_heads} kv heads x "
        f"{m.head_dim} ({c.model.dtype or m.dtype}): {slot / 1024:.0f} KiB per token slot; "
        f"rollout {g} prompts x n={n}, prompt {p} + response {r} slots, over {devices} devices")
  print(f"  per-row layout B x (P + R): {gib(per_row(g)):.1f} GiB per device")
  print(f"  shared layout  G x P + B x R: {gib(shared(g)):.1f} GiB per device "
        f"({per_row(g) / shared(g):.2f}x less)")
  step = devices
  fits = lambda f: max((k for k in range(step, 4096 + step, step) if f(k) <= budget), default=0)
  print(f"  weights (bf16) {gib(weights):.1f} GiB per device; largest rl.sample_prompts (a "
        f"multiple of {step}) whose KV cache + weights fit 90% of {hbm_gib} GiB: per-row "
        f"{fits(per_row)}, shared {fits(shared)}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--preset", default="cpu-29m")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--batch", type=int, default=8, help="prompts")
  ap.add_argument("--samples", type=int, default=8, help="n samples per prompt")
  ap.add_argument("--prompt-len", type=int, default=64)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--repeats", type=int, default=3, help="timed calls per sampler")
  ap.add_argument("--no-hf", action="store_true", help="skip transformers (GPU / big presets)")
  ap.add_argument("--no-per-row", action="store_true", help="skip the per-row cache layout")
  ap.add_argument("--ckpt-dir", default=None, help="where to write the HF checkpoint")
  ap.add_argument("--bandwidth-gbs", type=float, default=None,
                  help="accelerator memory bandwidth for the bandwidth bound (default: by kind)")
  ap.add_argument("--kv-plan", default=None, metavar="CONFIG[:ARG]",
                  help="print the analytic KV-cache plan of a config's rollout and exit")
  ap.add_argument("--devices", type=int, default=8, help="devices for --kv-plan")
  ap.add_argument("--hbm-gib", type=float, default=95.7, help="HBM per device for --kv-plan")
  args = ap.parse_args(argv)
  if args.repeats < 3:
    ap.error(f"--repeats {args.repeats}: need at least 3 timed calls per side (the median)")
  if args.kv_plan:
    return kv_plan(args.kv_plan, args.devices, args.hbm_gib)

  import jax
  _listen()
  from real_jax import models, sampling
  from real_jax import sharding as shd
  shd.use_cpu_without_accelerator()
  from real_jax.models import hf as hf_io

  preset = models.get_preset(args.preset)
  mcfg = preset.model.replace(dtype=args.dtype, param_dtype=args.dtype)
  rows = args.batch * args.samples
  rng = np.random.default_rng(1234)
  prompts = rng.integers(1, mcfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  base = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=0, eos_ids=(), stop_sequences=(),
                                 prompt_buckets=(args.prompt_len,))
  layouts = {"shared": base}
  if not args.no_per_row:
    layouts["per-row"] = base.replace(share_prompt_cache=False)

  ckpt = None
  if not args.no_hf:
    ckpt = args.ckpt_dir or tempfile.mkdtemp(prefix="sampler_bench_")
    build_hf_checkpoint(ckpt, mcfg)
    _, graphdef, params = hf_io.load_hf(ckpt, dtype=args.dtype)
  else:
    graphdef, params = models.init_params(mcfg, seed=0)
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}; model "
        f"{args.preset} {args.dtype}: {mcfg.num_params() / 1e6:.1f}M params; {args.batch} prompts"
        f" x n={args.samples} = {rows} rows; prompt {args.prompt_len}, {args.new_tokens} new "
        f"tokens; T={args.temperature} top_p={args.top_p} top_k=0", flush=True)
  if not args.no_hf:
    import torch
    print(f"transformers: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

  results = {}
  for name, cfg in layouts.items():
    before = _compile_seconds()
    t_first, tok, _ = run_jax(graphdef, params, prompts, mask, cfg, args.samples, seed=0)
    compile_s = _compile_seconds() - before
    assert tok.shape == (rows, args.new_tokens)
    one = cfg.replace(max_new_tokens=1)  # prefill + the first draw
    run_jax(graphdef, params, prompts, mask, one, args.samples, seed=0)
    pre = statistics.median(run_jax(graphdef, params, prompts, mask, one, args.samples,
                                    seed=s)[0] for s in range(3))
    peak = compiled_peak_bytes(graphdef, params, prompts, mask, cfg, args.samples)
    results[name] = {"compile": compile_s, "prefill": pre, "times": [], "rss": [], "peak": peak}
    print(f"[real_jax {name}] compile {compile_s:.2f}s, first call {t_first:.2f}s, prefill+1 "
          f"token {1e3 * pre:.0f} ms, compiled peak {peak / 2**20:.0f} MiB", flush=True)

  if not args.no_hf:  # one untimed call, as real_jax's first (compiling) call above
    dt, _, _ = run_hf(ckpt, prompts, args.samples, args.new_tokens, args.top_p,
                      args.temperature, seed=99)
    print(f"[transformers] first call (untimed): {dt:.2f}s", flush=True)
  hf_times, hf_rss = [], []
  for r in range(args.repeats):
    if not args.no_hf:
      dt, tok, grow = run_hf(ckpt, prompts, args.samples, args.new_tokens, args.top_p,
                             args.temperature, seed=r)
      assert tok.shape == (rows, args.new_tokens), tok.shape
      hf_times.append(dt)
      hf_rss.append(grow)
      print(f"  transformers call {r}: {dt:.2f}s, RSS +{grow / 2**20:.0f} MiB", flush=True)
    for name, cfg in layouts.items():
      dt, tok, grow = run_jax(graphdef, params, prompts, mask, cfg, args.samples, seed=100 + r)
      results[name]["times"].append(dt)
      results[name]["rss"].append(grow)
      print(f"  real_jax {name} call {r}: {dt:.2f}s, RSS +{grow / 2**20:.0f} MiB (distinct "
            f"token fraction {len(np.unique(tok)) / tok.size:.2f})", flush=True)

  peak_gflops = matmul_peak_gflops() if jax.default_backend() == "cpu" else None
  shape_gflops = decode_matmul_gflops(mcfg, rows) if peak_gflops else None
  flop_step = decode_step_gflop(mcfg, rows, args.prompt_len, args.new_tokens)
  kv_row_slot = 2 * mcfg.num_layers * mcfg.num_kv_heads * mcfg.head_dim * np.dtype(
      args.dtype if args.dtype != "bfloat16" else np.float16).itemsize
  kv = {"shared": (args.batch * args.prompt_len + rows * args.new_tokens) * kv_row_slot,
        "per-row": rows * (args.prompt_len + args.new_tokens) * kv_row_slot}
  kv_mid = {"shared": (args.batch * args.prompt_len + rows * args.new_tokens / 2) * kv_row_slot,
            "per-row": rows * (args.prompt_len + args.new_tokens / 2) * kv_row_slot}
  print("\n=== results (median over timed calls) ===")
  tps = {}
  for name in layouts:
    res = results[name]
    t = statistics.median(res["times"])
    tps[name] = rows * args.new_tokens / t
    step_ms = 1e3 * (t - res["prefill"]) / max(args.new_tokens - 1, 1)
    line = (f"real_jax {name:8s}: {tps[name]:8.0f} new tokens/s ({t:.2f} s/call, {step_ms:.1f} "
            f"ms/decode step, prefill+1 {1e3 * res['prefill']:.0f} ms, compile "
            f"{res['compile']:.1f} s); KV cache {kv[name] / 2**20:.0f} MiB, compiled peak "
            f"{res['peak'] / 2**20:.0f} MiB, RSS growth {statistics.median(res['rss']) / 2**20:.0f}"
            f" MiB")
    if peak_gflops:
      bound_ms = 1e3 * flop_step / peak_gflops
      shape_ms = 1e3 * flop_step / shape_gflops
      line += (f"; decode step {flop_step:.2f} GFLOP: bound {bound_ms:.1f} ms at the measured "
               f"{peak_gflops:.0f} GFLOP/s matmul peak = {bound_ms / step_ms:.0%} of it; bound "
               f"{shape_ms:.1f} ms at the {shape_gflops:.0f} GFLOP/s its own matmul shapes "
               f"reach = {shape_ms / step_ms:.0%} of that")
    else:  # accelerator: bytes read per step (weights + the KV cache at mid-decode) / bandwidth
      kind = dev.device_kind.lower()
      bw = args.bandwidth_gbs or (4800.0 if "h200" in kind else 3350.0 if "h100" in kind
                                  else 2039.0)
      read = mcfg.num_params() * np.dtype(np.float16 if args.dtype == "bfloat16" else
                                          args.dtype).itemsize + kv_mid[name]
      bound_ms = 1e3 * read / (bw * 1e9)
      line += (f"; {read / 1e9:.2f} GB read per step: bound {bound_ms:.2f} ms at {bw:.0f} GB/s "
               f"= {bound_ms / step_ms:.0%} of the memory-bandwidth bound")
    print(line)
  if hf_times:
    t = statistics.median(hf_times)
    hf_tps = rows * args.new_tokens / t
    print(f"transformers generate: {hf_tps:8.0f} new tokens/s ({t:.2f} s/call, eager), RSS growth"
          f" {statistics.median(hf_rss) / 2**20:.0f} MiB")
    for name in layouts:
      print(f"ratio real_jax {name} / transformers: {tps[name] / hf_tps:.2f}x")
  if "per-row" in tps:
    print(f"ratio shared / per-row: {tps['shared'] / tps['per-row']:.2f}x tokens/s, "
          f"{results['per-row']['peak'] / results['shared']['peak']:.2f}x less compiled peak, "
          f"{kv['per-row'] / kv['shared']:.2f}x less KV cache")


if __name__ == "__main__":
  sys.exit(main())
