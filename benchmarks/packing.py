r"""Packed vs padded supervised train steps: real tokens per second, side by side in one process.

The reference is today's batcher: each batch left-pads its prompts to the smallest prompt bucket
that holds the longest one and right-pads its targets to the smallest target bucket
(`data/batching.py`), one record per row. The packed batch holds the same records, laid end to
end in rows of the same width (`train/packing.py`, `data.pack=true`). Both run the same jitted
warm-up (SFT) train step (`steps.make_train_step`), each timed as the best of `--repeats` calls
per batch (the two layouts alternate; a call places its batch and, packed, packs it first),
over `--batches` batches; tokens/s counts real tokens only.

Length distributions (`--lengths`):
  prometheus: Prometheus-like judge records, a parametric stand-in for the Feedback
    Collection (not fitted to it: the dataset is not available offline) spanning its ranges,
    prompts of a few hundred to ~2,000 tokens and CoTs of ~50 to the 1,024 limit: prompts
    lognormal around 800 tokens clipped to [250, 2000], CoTs lognormal around 250 clipped to
    [50, 1024] (+ delimiter, score and EOS), each scaled by `--scale` (1/4 by default, so a
    29M model steps in seconds on a CPU; the buckets scale with it).
  synthetic: the synthetic task's own records (`data.synthetic` train split, tokenised by the
    real batcher with its buckets: prompts 96-110 tokens, demonstrations 51).

The RL update (`--lengths rl`): one optimiser step of the REAL loss over a mini-batch of
`--batch` rollout rows whose CoTs have Prometheus-like lengths (the response region as wide as
the longest allowed CoT, 1024 x scale + 1), with fixed micro-batches of `--micro` rows
(`rl.micro_batch_size`) against token-budget micro-batches of the same token count
(`rl.token_budget = micro x the full row width`), both timed in alternation; each timed call
places its batch, groups its rows (budget) and donates its state, as `run_rl` does.

  python benchmarks/packing.py                                  # all three, cpu-29m, this CPU
  python benchmarks/packing.py --lengths prometheus --scale 1 --preset tiny-1m
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
import optax  # noqa: E402

from real_jax import sharding as shd  # noqa: E402
from real_jax.layout import bucket_length, left_pad, power_of_two_buckets, right_pad  # noqa: E402
from real_jax.models import get_preset, init_params  # noqa: E402
from real_jax.data import build_synthetic_tokenizer  # noqa: E402
from real_jax.data.batching import BatchConfig, JudgeBatcher  # noqa: E402
from real_jax.data.records import RecordOptions, make_record  # noqa: E402
from real_jax.data.synthetic import SyntheticConfig, generate_split  # noqa: E402
from real_jax.judge import load_tokenizer  # noqa: E402
from real_jax.judge.scores import ScoreTokens, resolve_score_tokens  # noqa: E402
from real_jax.train.batch import RLBatch  # noqa: E402
from real_jax.train import packing, state as state_lib, steps as steps_lib  # noqa: E402
from real_jax.train.supervised import lm_batch  # noqa: E402

PROMPT_BUCKETS = (64, 128, 256, 512, 1024, 2048)
TARGET_BUCKETS = (32, 64, 128, 256, 512, 1024)


def prometheus_lengths(n: int, scale: float, rng) -> tuple[np.ndarray, np.ndarray]:
  """(prompt, target) token counts of n Prometheus-like records (see the module docstring)."""
  prompt = np.clip(rng.lognormal(np.log(800), 0.45, n), 250, 2000)
  cot = np.clip(rng.lognormal(np.log(250), 0.6, n), 50, 1024 - 8)
  return (np.maximum(prompt * scale, 4).astype(int),
          np.maximum(cot * scale, 2).astype(int) + 8)


def _padded_from_lengths(prompt_len, target_len, scale, vocab, rng):
  """A padded SFT batch of random tokens with the batcher's layout and buckets (scaled)."""
  pb = tuple(max(8, int(b * scale)) for b in PROMPT_BUCKETS)
  tb = tuple(max(8, int(b * scale)) for b in TARGET_BUCKETS)
  prompts = [rng.integers(3, vocab, size=p) for p in prompt_len]
  targets = [rng.integers(3, vocab, size=t) for t in target_len]
  pt, pm = left_pad(prompts, bucket_length(max(prompt_len), pb), 0)
  ct, cm = right_pad(targets, bucket_length(max(target_len), tb), 0)
  b = {"prompt_tokens": pt, "prompt_mask": pm, "completion_tokens": ct, "completion_mask": cm,
       "target": np.full(len(prompts), 3.0, np.float32), "valid": np.ones(len(prompts), np.int32)}
  return lm_batch(b, "sft", np.zeros(len(prompts), np.int32))


def _synthetic_batches(n_batches: int, batch: int):
  """Padded SFT batches of the synthetic task through the real batcher (and its buckets)."""
  tok_dir = os.path.join(tempfile.mkdtemp(), "tok")
  build_synthetic_tokenizer(tok_dir)
  tok = load_tokenizer(tok_dir)
  st = resolve_score_tokens(tok)
  records = [make_record(r, source="synthetic", row_id=r["id"], options=RecordOptions())
             for r in generate_split(SyntheticConfig(), "train")]
  batcher = JudgeBatcher(records, tok, BatchConfig(batch_size=batch, buckets=(128,),
                                                   with_targets=True, max_completion_len=64,
                                                   completion_buckets=(32, 64)),
                         process_index=0, process_count=1, score_tokens=st)
  out = []
  for _ in range(n_batches):
    b = next(batcher)
    out.append(lm_batch(b, "sft", np.zeros(batch, np.int32)))
  return out, len(tok)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lengths", default="prometheus,synthetic,rl")
  p.add_argument("--micro", type=int, default=4, help="rows per fixed RL micro-batch")
  p.add_argument("--preset", default="cpu-29m")
  p.add_argument("--batch", type=int, default=16, help="records per step")
  p.add_argument("--batches", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--scale", type=float, default=0.25, help="prometheus lengths are scaled so")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  shd.use_cpu_without_accelerator()
  print(f"devices {jax.devices()}, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d')}")
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  for which in args.lengths.split(","):
    rng = np.random.default_rng(args.seed)
    if which == "rl":
      rl_update(args, mesh, rng)
      continue
    if which == "synthetic":
      batches, vocab = _synthetic_batches(args.batches, args.batch)
    else:
      vocab = 512
      batches = []
      for _ in range(args.batches):
        pl, tl = prometheus_lengths(args.batch, args.scale, rng)
        batches.append(_padded_from_lengths(pl, tl, args.scale, vocab, rng))
    cfg = get_preset(args.preset).model
    cfg = cfg.replace(vocab_size=max(cfg.vocab_size, -(-vocab // 64) * 64))
    graphdef, params = init_params(cfg, mesh=mesh, seed=0)
    tx = optax.adamw(1e-5)
    loss = steps_lib.sft_objective()
    lengths = np.concatenate([packing.record_lengths(b) for b in batches])
    print(f"\n[{which}] {args.preset}, {args.batches} batches of {args.batch} records; record "
          f"tokens p10/p50/p90/max {np.percentile(lengths, [10, 50, 90]).astype(int).tolist()}"
          f"/{lengths.max()}")
    # Both layouts of each batch compiled first, then timed in alternation (best of repeats),
    # so a change in the machine's load hits both alike.
    stats = {layout: {"tok": 0.0, "sec": 0.0, "rows": [], "slots": 0}
             for layout in ("padded", "packed")}
    for b in batches:
      calls = {}
      packed, _ = packing.pack_lm_batch(b, packing.PackSpec())
      for layout, batch in (("padded", b), ("packed", packed)):
        state, sh = state_lib.init_state(jax.tree.map(np.asarray, params), tx, mesh, 0)
        step = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, batch, donate=False)
        # The timed call includes placing the batch and, for the packed layout, packing it
        # (host work run_supervised does before every step).
        prep = ((lambda b=b: packing.pack_lm_batch(b, packing.PackSpec())[0])
                if layout == "packed" else (lambda b=b: b))
        calls[layout] = lambda step=step, state=state, prep=prep: jax.block_until_ready(
            step(state, shd.put_batch(prep(), mesh)))
        st = stats[layout]
        st["tok"] += float(np.asarray(batch.mask).sum())
        st["rows"].append(batch.tokens.shape)
        st["slots"] += batch.tokens.size
      best = _alternate(calls, args.repeats)
      for layout in calls:
        stats[layout]["sec"] += best[layout]
    totals = {}
    for layout, st in stats.items():
      totals[layout] = st["tok"] / st["sec"]
      print(f"  {layout:6s} {totals[layout]:10.0f} real tokens/s  fill "
            f"{st['tok'] / st['slots']:.2f}  [rows, width] {st['rows']}")
    print(f"  packed / padded = {totals['packed'] / totals['padded']:.2f}x  "
          f"(load {os.getloadavg()[0]:.2f})")


def _alternate(calls: dict, repeats: int) -> dict:
  """Best wall time of each call, the calls alternating (one warm-up call each first)."""
  for call in calls.values():
    call()
  best = {name: float("inf") for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def rl_update(args, mesh, rng):
  """Fixed vs token-budget micro-batches of one REAL optimiser step (module docstring)."""
  st = ScoreTokens(token_ids=(11, 12, 13, 14, 15), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                   delimiter_ids=(20, 21, 22), eos_id=1)
  b, vocab = args.batch, 512
  prompt_len, target_len = prometheus_lengths(b, args.scale, rng)
  cot = target_len - 5  # the CoT with its delimiter (no score token, no EOS)
  full = int(1024 * args.scale) + 1
  lp = bucket_length(int(prompt_len.max()), tuple(max(8, int(x * args.scale))
                                                 for x in PROMPT_BUCKETS))
  width = lp + full
  tokens = np.zeros((b, width), np.int32)
  mask = np.zeros((b, width), bool)
  cot_mask = np.zeros((b, width), np.float32)
  for i in range(b):
    tokens[i, lp - prompt_len[i]:lp + cot[i]] = rng.integers(30, vocab, prompt_len[i] + cot[i])
    mask[i, lp - prompt_len[i]:lp + cot[i]] = True
    cot_mask[i, lp:lp + cot[i]] = 1.0
  ones = np.ones(b, np.float32)
  batch = RLBatch(tokens=tokens, mask=mask, score_pos=(lp + cot - 1).astype(np.int32),
                  cot_mask=cot_mask, old_lp=np.zeros((b, width), np.float32),
                  ref_lp=np.zeros((b, width), np.float32),
                  target=rng.integers(1, 6, b).astype(np.float32),
                  target_id=rng.integers(11, 16, b).astype(np.int32),
                  adv=rng.normal(size=b).astype(np.float32), pg_keep=ones, refine_keep=ones)
  cfg = get_preset(args.preset).model
  cfg = cfg.replace(vocab_size=max(cfg.vocab_size, vocab))
  graphdef, params = init_params(cfg, mesh=mesh, seed=0)
  tx = optax.adamw(1e-5)
  loss_cfg = steps_lib.RLLossConfig(beta=1.0, lam=1.0, response_width=full)
  loss_for = lambda w: steps_lib.real_objective(st, dataclasses.replace(
      loss_cfg, response_width=w or full))
  budget = packing.TokenBudget(tokens=args.micro * width, widths=power_of_two_buckets(full, 16))
  # Like for like: each side places its batch, groups its rows (budget) and donates and chains
  # its own state inside the timed call, as run_rl does.
  states = {}
  states["fixed"], sh = state_lib.init_state(jax.tree.map(np.asarray, params), tx, mesh, 0)
  states["budget"], _ = state_lib.init_state(jax.tree.map(np.asarray, params), tx, mesh, 0)
  fixed = steps_lib.make_train_step(loss_for(0), graphdef, tx, mesh, sh, batch,
                                    num_micro=b // args.micro)
  dynamic = steps_lib.AccumulatingStep(loss_for, graphdef, tx, mesh, sh)

  def run_fixed():
    states["fixed"], m = fixed(states["fixed"], shd.put_batch(batch, mesh))
    jax.block_until_ready((states["fixed"], m))

  def run_budget():
    micro = packing.budget_micro_batches(batch, lp, budget)
    states["budget"], m = dynamic(states["budget"], batch, micro)
    jax.block_until_ready((states["budget"], m))

  micro = packing.budget_micro_batches(batch, lp, budget)
  calls = {"fixed": run_fixed, "budget": run_budget}
  best = _alternate(calls, args.repeats)
  print(f"\n[rl update] {args.preset}, one REAL step on {b} rows: prompts "
        f"p50 {int(np.median(prompt_len))} (width {lp}), CoTs p10/p50/p90/max "
        f"{np.percentile(cot, [10, 50, 90]).astype(int).tolist()}/{cot.max()} of {full}")
  print(f"  fixed   {best['fixed']:7.2f} s  ({b // args.micro} micro-batches of {args.micro} "
        f"rows x {width})")
  shapes = [(mb.num_rows, mb.tokens.shape[1]) for _, mb in micro]
  print(f"  budget  {best['budget']:7.2f} s  ({len(micro)} micro-batches, [rows, width] "
        f"{shapes}; budget {budget.tokens} tokens)")
  print(f"  fixed / budget = {best['fixed'] / best['budget']:.2f}x  "
        f"(load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  main()
