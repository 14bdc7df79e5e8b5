"""TRACT's middle stage: one self-generated CoT per training prompt with the stage-1 model
(`run_tract_gen`), and the stage-2 batches built from them (`SelfCotBatches`: prompt ⊕ self-CoT,
cross-entropy on the CoT + squared error of y_hat)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from real_jax import layout, readout, sampling
from real_jax import sharding as shd
from real_jax.train import data_utils
from real_jax.train.batch import LMBatch
from real_jax.train.metrics import Progress
from real_jax.train.runner import Run

# The self-CoTs' sampling key is PRNGKey(seed + 7): apart from the run's other draws (model init
# PRNGKey(seed), evaluation PRNGKey(seed + 1000)).
SELFCOT_KEY_OFFSET = 7

__all__ = ["SelfCotBatches", "TRACT_COUNTS", "tract_gen_counts", "run_tract_gen"]


class SelfCotBatches:
  """TRACT stage 2: prompt ⊕ self-generated CoT, CE on the CoT + squared error of y_hat."""

  def __init__(self, run: Run, data: dict[str, np.ndarray], batch_size: int, seed: int):
    self.data, self.vocab = data, run.vocab
    n = len(data["target"])
    if n == 0:
      raise ValueError("TRACT stage 2 has no usable self-generated CoTs (none reached the "
                       "delimiter); train stage 1 longer or raise rl.max_response_len")
    # Few usable self-CoTs (e.g. a short smoke run): batches cannot be larger than the data.
    self.it = data_utils.ArrayIterator(n, min(batch_size, n), seed=seed)
    self.buckets = data_utils.prompt_buckets(run.config)

  def __next__(self) -> LMBatch:
    idx = next(self.it)
    d, pad = self.data, self.vocab.pad_id
    prompts = [d["prompt_flat"][d["prompt_off"][i]:d["prompt_off"][i + 1]] for i in idx]
    resps = [d["resp_flat"][d["resp_off"][i]:d["resp_off"][i + 1]] for i in idx]
    lp = layout.bucket_length(max(len(p) for p in prompts), self.buckets)
    pt, pm = layout.left_pad(prompts, lp, pad)
    rt, _ = layout.right_pad(resps, max(len(r) for r in resps), pad)
    length = np.array([len(r) for r in resps], np.int32)
    seqs = readout.build_sequences(pt, pm, rt, length, pad_id=pad, extra=0)
    target = d["target"][idx].astype(np.float32)
    return LMBatch(tokens=seqs.tokens, mask=seqs.mask, loss_mask=seqs.cot_mask,
                   score_pos=seqs.score_pos, target=target,
                   target_id=readout.target_token_ids(target, self.vocab.score_tokens),
                   sample_mask=np.ones(len(idx), np.float32))

  def state(self):
    return self.it.state()

  def restore(self, s):
    self.it.restore(s)


TRACT_COUNTS = "tract_selfcot_counts.json"


def tract_gen_counts(workdir: str) -> str:
  """One line describing TRACT's self-CoT generation (from <workdir>/tract_selfcot_counts.json)."""
  path = os.path.join(workdir, TRACT_COUNTS)
  if not os.path.exists(path):
    return "no self-CoT counts recorded"
  with open(path) as f:
    c = json.load(f)
  skipped = ", ".join(f"{k} {v}" for k, v in c.get("prompts_skipped", {}).items()) or "none"
  return (f"{c['kept']} kept of {c['generated']} generated from {c['prompts_read']} training "
          f"prompts; not reaching the delimiter: truncated {c['truncated']}, EOS first "
          f"{c['eos_before_delimiter']}; prompts skipped before sampling: {skipped}; "
          f"T={c['temperature']}, top-p {c['top_p']}, repetition penalty "
          f"{c['repetition_penalty']}")


def run_tract_gen(run: Run, params) -> dict[str, np.ndarray]:
  """Samples one CoT per training prompt with the stage-1 model; keeps those that reached the
  delimiter (the rest are counted and dropped; prompts the batcher skips, e.g. too long, are
  counted too). Saved to <workdir>/tract_selfcot.npz, counts to tract_selfcot_counts.json."""
  c = run.config
  score_tokens = run.vocab.score_tokens
  path = os.path.join(run.workdir, "tract_selfcot.npz")
  if shd.agree(os.path.exists(path)):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  src = run.sources.train
  n = len(src) if not c.tract.num_prompts else min(c.tract.num_prompts, len(src))
  records = [src[i] for i in range(n)]
  batch_size = c.eval.batch_size
  batcher = data_utils.make_batcher(c, records, run.vocab.tokenizer, score_tokens,
                                    batch_size=batch_size, with_targets=False, shuffle=False,
                                    num_epochs=1, drop_remainder=False)
  settings = readout.SamplerSettings(max_new_tokens=c.rl.max_response_len,
                                     temperature=c.tract.temperature, top_p=c.tract.top_p,
                                     repetition_penalty=c.tract.repetition_penalty)
  key = jax.random.PRNGKey(c.seed + SELFCOT_KEY_OFFSET)
  prompts, resps, targets = [], [], []
  eos_first = readout.STATUS_NAMES[sampling.EOS]
  truncated = readout.STATUS_NAMES[sampling.TRUNCATED]
  counts = {"generated": 0, "kept": 0, truncated: 0, eos_first: 0}
  with Progress("tract_gen", -(-n // batch_size), every=max(1, n // batch_size // 5),
                unit="batch") as prog:
    for i, b in enumerate(batcher):
      g = readout.sample_cots(run.graphdef, params, b["prompt_tokens"], b["prompt_mask"],
                              jax.random.fold_in(key, i), settings, score_tokens, num_samples=1,
                              mesh=run.mesh, pad_id=run.vocab.pad_id,
                              prompt_buckets=data_utils.prompt_buckets(c))
      for r in range(len(b["valid"])):
        if not b["valid"][r]:
          continue
        counts["generated"] += 1
        if not g.found[r]:
          counts[eos_first if g.eos[r] else truncated] += 1
          continue
        counts["kept"] += 1
        prompts.append(b["prompt_tokens"][r][b["prompt_mask"][r].astype(bool)])
        resps.append(g.response[r, :g.length[r]])
        targets.append(b["target"][r])
      prog.update(i + 1)
  counts.update(prompts_read=n, prompts_skipped={k: int(v) for k, v in
                                                 sorted(batcher.stats.items()) if v},
                temperature=c.tract.temperature, top_p=c.tract.top_p,
                repetition_penalty=c.tract.repetition_penalty)
  if not prompts:
    raise RuntimeError(f"TRACT: no self-generated CoT reached the delimiter ({counts}); train "
                       "stage 1 longer or raise rl.max_response_len")
  off = lambda seqs: np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
  data = {"prompt_flat": np.concatenate(prompts).astype(np.int32), "prompt_off": off(prompts),
          "resp_flat": np.concatenate(resps).astype(np.int32), "resp_off": off(resps),
          "target": np.asarray(targets, np.float32)}
  if shd.is_main_process():  # every process generated the same rows
    with open(os.path.join(run.workdir, TRACT_COUNTS), "w") as f:
      json.dump(counts, f, indent=2)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
  run.writer.write("tract_gen", 0, {k: v for k, v in counts.items()
                                    if isinstance(v, (int, float))})
  logging.info("[tract_gen] %s", tract_gen_counts(run.workdir) if shd.is_main_process()
               else counts)
  if counts["prompts_skipped"]:
    logging.warning("[tract_gen] prompts skipped before sampling: %s", counts["prompts_skipped"])
  return data
