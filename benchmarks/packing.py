r"""Packed vs padded supervised train steps: real tokens per second, side by side in one process.

The reference is today's batcher: each batch left-pads its prompts to the smallest prompt bucket
that holds the longest one and right-pads its targets to the smallest target bucket
(`data/batching.py`), one record per row. The packed batch holds the same records, laid end to
end in rows of the same width (`train/packing.py`, `data.pack=true`). Both run the same jitted
warm-up (SFT) train step (`steps.make_train_step`), each timed as the best of `--repeats` calls
per batch, over `--batches` batches; tokens/s counts real tokens only.

Length distributions (`--lengths`):
  prometheus: Prometheus-like judge records, the shape of the Feedback Collection: prompts
    lognormal around 800 tokens clipped to [250, 2000], CoTs lognormal around 250 clipped to
    [50, 1024] (+ delimiter, score and EOS), each scaled by `--scale` (1/4 by default, so a
    29M model steps in seconds on a CPU; the buckets scale with it).
  synthetic: the synthetic task's own records (`data.synthetic` train split, tokenised by the
    real batcher with its buckets: prompts 96-110 tokens, demonstrations 51).

  python benchmarks/packing.py                                  # both, cpu-29m, this CPU
  python benchmarks/packing.py --lengths prometheus --scale 1 --preset tiny-1m
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from common import best_time  # noqa: E402

from real_jax import sharding as shd  # noqa: E402
from real_jax.layout import bucket_length, left_pad, right_pad  # noqa: E402
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
  from real_jax.data import build_synthetic_tokenizer
  from real_jax.data.batching import BatchConfig, JudgeBatcher
  from real_jax.data.records import RecordOptions, make_record
  from real_jax.data.synthetic import SyntheticConfig, generate_split
  from real_jax.judge import load_tokenizer
  from real_jax.judge.scores import resolve_score_tokens
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
  p.add_argument("--lengths", default="prometheus,synthetic")
  p.add_argument("--preset", default="cpu-29m")
  p.add_argument("--batch", type=int, default=16, help="records per step")
  p.add_argument("--batches", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--scale", type=float, default=0.25, help="prometheus lengths are scaled so")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from real_jax.models import get_preset, init_params

  print(f"devices {jax.devices()}, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d')}")
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  for which in args.lengths.split(","):
    rng = np.random.default_rng(args.seed)
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
    totals = {}
    for layout in ("padded", "packed"):
      tok, sec, rows, slots = 0.0, 0.0, [], 0
      for b in batches:
        if layout == "packed":
          b, _ = packing.pack_lm_batch(b, packing.PackSpec())
        state, sh = state_lib.init_state(jax.tree.map(np.asarray, params), tx, mesh, 0)
        step = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, b, donate=False)
        placed = shd.put_batch(b, mesh)
        sec += best_time(lambda: jax.block_until_ready(step(state, placed)), args.repeats)
        tok += float(np.asarray(b.mask).sum())
        rows.append(b.tokens.shape)
        slots += b.tokens.size
      totals[layout] = tok / sec
      print(f"  {layout:6s} {tok / sec:10.0f} real tokens/s  fill {tok / slots:.2f}  "
            f"[rows, width] {rows}")
    print(f"  packed / padded = {totals['packed'] / totals['padded']:.2f}x  "
          f"(load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  main()
