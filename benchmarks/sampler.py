"""Rollout throughput: real_jax `sampling.sample` vs transformers `generate`, side by side.

CPU (default): a random Qwen3 with the `cpu-29m` shape (4 layers, hidden 512, vocab 32000,
tied) is built by transformers (torch.manual_seed(0)), saved with `save_pretrained` and loaded
by real_jax, so both libraries run the same weights on the same prompts (8 prompts x 64 random
token ids, numpy seed 1234), the same batch (8 x n=8 = 64 rows), T=1.0, top_p=0.9, no top-k,
128 new tokens with early stopping disabled (no EOS, no stop sequence: every row makes 128
tokens). The two libraries alternate call by call. tokens/s = rows x new tokens / wall time of
one full call (prefill + decode + fetching the tokens to the host). Compile time is reported
separately (sum of JAX's /jax/core/compile/* events during the first call).

  python benchmarks/sampler.py                       # CPU, real_jax vs transformers
  python benchmarks/sampler.py --compare-prefill     # also: broadcast vs repeat prefill
  python benchmarks/sampler.py --preset qwen3-1.7b --dtype bfloat16 --batch 64 --no-hf  # GPU

On an accelerator it also prints the fraction of the memory-bandwidth bound: bytes read per
decode step (weights in the compute dtype + the whole KV cache, which the decode attends over)
divided by the measured step time, over the card's bandwidth (--bandwidth-gbs).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time

import numpy as np

_COMPILE = collections.defaultdict(float)


def _listen():
  import jax
  def on_event(event, duration, **_):
    if event.startswith("/jax/core/compile/"):
      _COMPILE[event] += duration
  jax.monitoring.register_event_duration_secs_listener(on_event)


def _compile_seconds() -> float:
  return sum(_COMPILE.values())


def build_hf_checkpoint(out_dir: str, cfg) -> str:
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM
  torch.manual_seed(0)
  hf_cfg = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, tie_word_embeddings=cfg.tie_word_embeddings,
                       rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, pad_token_id=0,
                       eos_token_id=None)
  model = Qwen3ForCausalLM(hf_cfg)
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir


def run_hf(ckpt: str, prompts: np.ndarray, n: int, new_tokens: int, top_p: float,
           temperature: float, seed: int) -> tuple[float, np.ndarray]:
  import torch
  from transformers import Qwen3ForCausalLM
  model = _HF_CACHE.get(ckpt)
  if model is None:
    model = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    _HF_CACHE[ckpt] = model
  ids = torch.tensor(prompts, dtype=torch.long)
  torch.manual_seed(seed)
  t0 = time.perf_counter()
  with torch.inference_mode():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                         temperature=temperature, top_p=top_p, top_k=0,
                         num_return_sequences=n, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
  tokens = out[:, prompts.shape[1]:].numpy()
  return time.perf_counter() - t0, tokens


_HF_CACHE: dict = {}


def run_jax(graphdef, params, prompts, mask, cfg, n, seed, mesh=None) -> tuple[float, np.ndarray]:
  import jax
  from real_jax import sampling
  t0 = time.perf_counter()
  out = sampling.sample(graphdef, params, prompts, mask, jax.random.key(seed), cfg,
                        num_samples=n, mesh=mesh)
  tokens = np.asarray(out.tokens)
  np.asarray(out.lengths)
  return time.perf_counter() - t0, tokens


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
  ap.add_argument("--repeats", type=int, default=3, help="timed calls per library")
  ap.add_argument("--no-hf", action="store_true", help="skip transformers (GPU / big presets)")
  ap.add_argument("--compare-prefill", action="store_true",
                  help="also time group_prefill='repeat' against 'broadcast'")
  ap.add_argument("--ckpt-dir", default=None, help="where to write the HF checkpoint")
  ap.add_argument("--bandwidth-gbs", type=float, default=None,
                  help="memory bandwidth for the roofline fraction (default: by device kind)")
  args = ap.parse_args(argv)

  import jax
  _listen()
  from real_jax import models, sampling
  from real_jax.models import hf as hf_io

  preset = models.get_preset(args.preset)
  mcfg = preset.model.replace(dtype=args.dtype, param_dtype=args.dtype)
  rows = args.batch * args.samples
  rng = np.random.default_rng(1234)
  prompts = rng.integers(1, mcfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  scfg = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=0, eos_ids=(), stop_sequences=(),
                                 prompt_buckets=(args.prompt_len,))

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

  modes = ["broadcast", "repeat"] if args.compare_prefill else ["broadcast"]
  results = {}
  for mode in modes:
    cfg = scfg.replace(group_prefill=mode)
    before = _compile_seconds()
    t_first, tok = run_jax(graphdef, params, prompts, mask, cfg, args.samples, seed=0)
    compile_s = _compile_seconds() - before
    assert tok.shape == (rows, args.new_tokens)
    results[mode] = {"first": t_first, "compile": compile_s, "times": []}
    # Prefill alone: a 1-token call (prefill + the first draw).
    one = cfg.replace(max_new_tokens=1)
    run_jax(graphdef, params, prompts, mask, one, args.samples, seed=0)
    pre = [run_jax(graphdef, params, prompts, mask, one, args.samples, seed=s)[0]
           for s in range(3)]
    results[mode]["prefill"] = statistics.median(pre)
    print(f"[real_jax {mode}] compile {compile_s:.2f}s, first call {t_first:.2f}s, prefill+1 "
          f"token {1e3 * results[mode]['prefill']:.0f} ms", flush=True)

  hf_times = []
  for r in range(args.repeats):
    if not args.no_hf:
      dt, tok = run_hf(ckpt, prompts, args.samples, args.new_tokens, args.top_p,
                       args.temperature, seed=r)
      assert tok.shape == (rows, args.new_tokens), tok.shape
      hf_times.append(dt)
      print(f"  hf call {r}: {dt:.2f}s", flush=True)
    for mode in modes:
      cfg = scfg.replace(group_prefill=mode)
      dt, tok = run_jax(graphdef, params, prompts, mask, cfg, args.samples, seed=100 + r)
      results[mode]["times"].append(dt)
      distinct = len(np.unique(tok)) / tok.size
      print(f"  real_jax {mode} call {r}: {dt:.2f}s (distinct token fraction {distinct:.2f})",
            flush=True)

  print("\n=== results (median over timed calls) ===")
  jax_tps = None
  for mode in modes:
    t = statistics.median(results[mode]["times"])
    tps = rows * args.new_tokens / t
    step_ms = 1e3 * (t - results[mode]["prefill"]) / max(args.new_tokens - 1, 1)
    print(f"real_jax ({mode:9s}): {tps:8.0f} new tokens/s  ({t:.2f} s/call, ~{step_ms:.1f} "
          f"ms/decode step, prefill+1 {1e3 * results[mode]['prefill']:.0f} ms, compile "
          f"{results[mode]['compile']:.2f} s)")
    if mode == "broadcast":
      jax_tps, jax_step = tps, step_ms
  if hf_times:
    t = statistics.median(hf_times)
    hf_tps = rows * args.new_tokens / t
    print(f"transformers generate : {hf_tps:8.0f} new tokens/s  ({t:.2f} s/call, eager, no "
          f"compile)")
    print(f"ratio real_jax / transformers: {jax_tps / hf_tps:.2f}x")

  if jax.default_backend() != "cpu" or args.bandwidth_gbs:
    import jax.numpy as jnp
    bw = args.bandwidth_gbs
    if bw is None:
      kind = dev.device_kind.lower()
      bw = 4800.0 if "h200" in kind else 3350.0 if "h100" in kind else 2039.0
    dt_bytes = jnp.dtype(mcfg.dtype).itemsize
    weight_bytes = mcfg.num_params() * dt_bytes
    s = args.prompt_len + args.new_tokens
    cache_bytes = 2 * mcfg.num_layers * rows * s * mcfg.num_kv_heads * mcfg.head_dim * dt_bytes
    bound_ms = 1e3 * (weight_bytes + cache_bytes) / (bw * 1e9)
    print(f"bytes/step: weights {weight_bytes / 1e9:.2f} GB + KV cache {cache_bytes / 1e9:.2f} GB"
          f" -> bound {bound_ms:.2f} ms/step at {bw:.0f} GB/s; measured {jax_step:.2f} ms/step: "
          f"{bound_ms / jax_step:.1%} of the memory-bandwidth bound")


if __name__ == "__main__":
  sys.exit(main())
